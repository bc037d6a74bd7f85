"""The hard-voice view (issue 18): where a leave-one-corpus-out model errs, by voice and clip.

Per speaker, the median F0 over its recordings (bench/voicefeat.py). A speaker is in the **overlap band**
when the pitch ranges of the sexes meet there: a woman below ``WOMAN_BELOW_HZ`` or a man above
``MAN_ABOVE_HZ``. Files are split by that band, by clip length (``SHORT_S``) and by sex; each group gets the
speaker-balanced accuracy (per speaker, then averaged within each sex present, then over the sexes) of the
held-out corpus's (calibrated) file predictions, beside the ECE and the accuracy and share of files kept
above a few confidence bars.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from voiceclf import calibration
from voiceclf.metrics import per_speaker, speaker_balanced

WOMAN_BELOW_HZ = 175.0
MAN_ABOVE_HZ = 145.0
SHORT_S = 1.5
BARS = (0.7, 0.8, 0.9, 0.95)


def speaker_f0(measures: pd.DataFrame) -> pd.DataFrame:
    """One row per speaker: ``speaker``, ``f0_speaker`` (median over its recordings' median F0, Hz)."""
    return measures.groupby("speaker", as_index=False).agg(f0_speaker=("f0_med", "median"))


def annotate(files: pd.DataFrame, measures: pd.DataFrame) -> pd.DataFrame:
    """``files`` (train.file_level's: file, speaker, corpus, y, p, correct) with ``duration_s``, ``f0_speaker``,
    ``overlap`` (in the band) and ``short`` (shorter than SHORT_S)."""
    spk = speaker_f0(measures)
    out = files.merge(measures[["file", "duration_s"]], on="file", how="left").merge(spk, on="speaker", how="left")
    f0 = out["f0_speaker"].to_numpy(float)
    out["overlap"] = np.where(out["y"] == 0, f0 < WOMAN_BELOW_HZ, f0 > MAN_ABOVE_HZ) & np.isfinite(f0)
    out["short"] = out["duration_s"].to_numpy(float) < SHORT_S
    return out


def _bacc(f: pd.DataFrame) -> float:
    return speaker_balanced(per_speaker(f)) if len(f) else float("nan")


def view(files: pd.DataFrame) -> dict[str, float]:
    """Speaker-balanced accuracy overall and per group, women and men apart, ECE, and the share kept and its
    accuracy at each confidence bar, of one held-out corpus's annotated files (:func:`annotate`)."""
    out = {"acc": _bacc(files), "women": _bacc(files[files["y"] == 0]), "men": _bacc(files[files["y"] == 1]),
           "overlap": _bacc(files[files["overlap"]]), "outside": _bacc(files[~files["overlap"]]),
           "short": _bacc(files[files["short"]]), "long": _bacc(files[~files["short"]]),
           "overlap_speakers": int(files.loc[files["overlap"], "speaker"].nunique()), "short_files": int(files["short"].sum()),
           "ece": calibration.ece(files["p"], files["y"])}
    for r in calibration.kept_at(files["p"], files["y"], BARS).itertuples(index=False):
        out[f"kept@{r.min_confidence:g}"] = r.kept
        out[f"acc@{r.min_confidence:g}"] = r.acc_kept
    return out


def pct(v: float) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def markdown(rows: list[dict]) -> str:
    """One row per (held-out corpus, method): the view's numbers, percentages with one decimal."""
    head = ["held-out", "method", "all", "women", "men", "overlap band (spk)", "outside", "< 1.5 s (files)", "≥ 1.5 s", "ECE"] + \
           [f"≥ {b:g}: kept / acc" for b in BARS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["held_out"], r["method"], pct(r["acc"]), pct(r["women"]), pct(r["men"]), f"{pct(r['overlap'])} ({r['overlap_speakers']})",
                 pct(r["outside"]), f"{pct(r['short'])} ({r['short_files']})", pct(r["long"]), f"{r['ece']:.3f}"]
        cells += [f"{pct(r[f'kept@{b:g}'])} / {pct(r[f'acc@{b:g}'])}" for b in BARS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
