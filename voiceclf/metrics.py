"""How a model is measured, as the product is used: window p(male) → one p per file → accuracy per speaker →
averaged within each sex, then over the sexes ("speaker-balanced"), per corpus; and across corpora left out.

``val_score``, the mean of that over the validation corpora (so a large corpus cannot hide a small one), picks each
point's epoch; ``xval_score`` (:func:`cross_corpus_score`) ranks the points.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from voiceclf.config import LABELS

if TYPE_CHECKING:
    from voiceclf.dataset import Data
    from voiceclf.train import PointResult


def file_level(p: np.ndarray, data: Data) -> pd.DataFrame:
    """Pool window probabilities per file (mean), as the scorer does."""
    df = pd.DataFrame({"file": data.file, "speaker": data.speaker, "corpus": data.corpus, "y": data.y, "p": p})
    files = df.groupby("file", sort=True).agg(speaker=("speaker", "first"), corpus=("corpus", "first"), y=("y", "first"), p=("p", "mean")).reset_index()
    files["correct"] = (files["p"] >= 0.5).astype(int) == files["y"]
    return files


def per_speaker(files: pd.DataFrame) -> pd.DataFrame:
    """One row per speaker: corpus, label, files, acc (share of the speaker's files labelled right)."""
    out = files.groupby("speaker").agg(corpus=("corpus", "first"), label=("y", "first"), files=("file", "size"), acc=("correct", "mean")).reset_index()
    out["label"] = out["label"].map(dict(enumerate(LABELS)))
    return out


def speaker_balanced(speakers: pd.DataFrame) -> float:
    """Accuracy per speaker, averaged within each sex, then over the sexes present."""
    return float(speakers.groupby("label")["acc"].mean().mean()) if len(speakers) else float("nan")


def evaluate(files: pd.DataFrame, prefix: str) -> dict[str, float]:
    """File-level and speaker-balanced metrics, overall and per corpus (``<metric>.<corpus>``).

    ``<prefix>_score`` is the mean over corpora of the speaker-balanced accuracy (the selection
    metric for ``val``); ``<prefix>_worst_corpus`` its minimum.
    """
    out: dict[str, float] = {}
    spk = per_speaker(files)

    # sklearn where used: its import (~0.8 s, scipy.stats) would otherwise be paid by every importer of this module
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    def basic(f: pd.DataFrame, s: pd.DataFrame, suffix: str) -> None:
        pred = (f["p"] >= 0.5).astype(int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[f"{prefix}_acc{suffix}"] = float(accuracy_score(f["y"], pred))
            out[f"{prefix}_balanced_acc{suffix}"] = float(balanced_accuracy_score(f["y"], pred))
        out[f"{prefix}_speaker_bacc{suffix}"] = speaker_balanced(s)

    basic(files, spk, "")
    out[f"{prefix}_speaker_acc"] = float((spk["acc"] > 0.5).mean()) if len(spk) else float("nan")
    corpora = sorted(set(files["corpus"]))
    for c in corpora:
        basic(files[files["corpus"] == c], spk[spk["corpus"] == c], f".{c}")
    per_corpus = [out[f"{prefix}_speaker_bacc.{c}"] for c in corpora]
    out[f"{prefix}_score"] = float(np.mean(per_corpus)) if per_corpus else float("nan")
    out[f"{prefix}_worst_corpus"] = float(np.min(per_corpus)) if per_corpus else float("nan")
    return out


def cross_corpus_score(results: dict[str, PointResult]) -> dict[str, float]:
    """``xval_score``: the mean over training corpora of the speaker-balanced accuracy of the model
    trained without that corpus; ``xval_worst_corpus`` its minimum; ``xval_speaker_bacc.<corpus>`` each."""
    per = {c: r.test["test_score"] for c, r in results.items()}
    out = {f"xval_speaker_bacc.{c}": v for c, v in sorted(per.items())}
    if per:
        out["xval_score"] = float(np.mean(list(per.values())))
        out["xval_worst_corpus"] = float(np.min(list(per.values())))
    return out
