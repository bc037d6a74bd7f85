"""Score files with a loaded model: windows → p(male) per window → one report row per file."""
from __future__ import annotations

import dataclasses

import numpy as np

from voiceclf import turns
from voiceclf.file_windows import Result
from voiceclf.calibration import IDENTITY, Calibration, decide
from voiceclf.config import LABELS
from voiceclf.model import p_male

REPORT_COLUMNS = ["path", "label", "p_male", "confidence", "duration_s", "windows", "status", "error", "model_uri", "model_version",
                  "female_s", "male_s", "female_share"]
#: One row per speech turn (voiceclf.turns), not per window.
SEGMENT_COLUMNS = ["path", "start_s", "end_s", "label", "p_male"]


def score_results(results: list[Result], model, *, threshold: float, model_uri: str, model_version: str, window_s: float,
                  calibration: Calibration = IDENTITY, min_confidence: float = 0.0) -> tuple[list[dict], list[dict]]:
    """Report rows (one per file) and segment rows (one per speech turn) for a batch of featurized files.

    A file's p_male is its windows' mean mapped by the model's ``calibration``; its confidence is the
    probability of the label reported, and below ``min_confidence`` that label is ``uncertain``
    (:func:`voiceclf.calibration.decide`). ``label`` is ``mixed`` when both sexes hold a real share of the
    file's speech (:func:`voiceclf.turns.is_mixed`), which takes precedence over both.
    """
    with_windows = [r for r in results if r.n_windows]
    probs = p_male(model, np.concatenate([r.windows.features for r in with_windows])) if with_windows else np.zeros(0)
    rows, segments, start = [], [], 0
    for r in results:
        row = dict(path=r.item.abspath, label="", p_male=np.nan, confidence=np.nan,
                   duration_s=r.duration_s if r.duration_s is not None else np.nan, windows=r.n_windows,
                   status="ok", error="", model_uri=model_uri, model_version=model_version, female_s=np.nan, male_s=np.nan, female_share=np.nan)
        if r.n_windows:
            p = probs[start : start + r.n_windows]
            start += r.n_windows
            mean = calibration.apply(float(p.mean()))
            label, confidence = decide(mean, threshold, min_confidence)
            row.update(label=label, p_male=round(mean, 6), confidence=round(confidence, 6))
            segments += _turns(row, p, r, window_s=window_s, threshold=threshold, calibration=calibration)
        elif r.error == "no_speech":
            row.update(status="no_speech", error=r.message)
        else:
            row.update(status="error", error=f"{r.error}: {r.message}")
        rows.append(row)
    return rows, segments



def _turns(row: dict, p: np.ndarray, r: Result, *, window_s: float, threshold: float, calibration: Calibration = IDENTITY) -> list[dict]:
    """The file's speech turns as segment rows; adds its seconds per sex to ``row`` and makes it ``mixed`` when both
    sexes hold a real share of its speech (after the file-level label: ``mixed`` comes first).

    A turn's p_male is calibrated as a file's is. A ``mixed`` row's confidence is the probability that its turns'
    labels are right, weighted by their seconds: the file-level p(male) says nothing about a label "mixed"."""
    found, seconds = turns.turns_of(p, r.windows.offsets_s, r.windows.regions_s, window_s=window_s, threshold=threshold)
    row.update(seconds)
    mixed = turns.is_mixed(found)  # on the model's own p, as its thresholds were chosen (bench/conversations.py)
    found = [dataclasses.replace(t, p_male=float(calibration.apply(t.p_male))) for t in found]
    if mixed:
        sure = np.array([t.p_male if t.label == LABELS[1] else 1.0 - t.p_male for t in found])
        length = np.array([t.end_s - t.start_s for t in found])
        row.update(label="mixed", confidence=round(float(np.average(sure, weights=length)), 6))
    return [dict(path=row["path"], start_s=round(t.start_s, 3), end_s=round(t.end_s, 3), label=t.label, p_male=round(t.p_male, 6)) for t in found]
