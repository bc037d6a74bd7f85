"""Calibrated confidence: a map from a file's pooled p(male) to a probability that holds on voices nobody trained on.

A file's p(male) is the mean of its windows' probabilities. On corpora a model never saw, that number
overstates: files called 95-99 % sure were right 92 % of the time. A scaling of its logit fixes it,
``p' = sigmoid(a * logit(p) + b)`` (``b = 0`` by default, see :func:`fit`), fitted on predictions for corpora LEFT OUT of training (the
cross-corpus trainings of the grid make them; with one corpus, the validation speakers). The two numbers
travel with the registered model (MLmodel metadata ``calibration``, plain JSON); a model without them
scores as before (the identity map).

Then a report row's ``confidence`` is the probability of the label it reports, whatever ``--threshold``
says, and a file below ``--min-confidence`` is labelled ``uncertain``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from voiceclf.config import LABELS

UNCERTAIN = "uncertain"
#: p is clipped this far from 0 and 1 before its logit: a window mean of exactly 0 or 1 has an infinite logit
EPS = 1e-6


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Calibration:
    """``p' = sigmoid(a * logit(p) + b)`` on a file's pooled p(male); ``a=1, b=0`` is the identity.

    ``fitted_on`` says which predictions fitted it (for the model's metadata, never read back as code).
    """

    a: float = 1.0
    b: float = 0.0
    fitted_on: str = "identity"

    def apply(self, p):
        """Calibrated p(male), same shape as ``p`` (a float for a float)."""
        if self.a == 1.0 and self.b == 0.0:
            return p
        out = 1.0 / (1.0 + np.exp(-(self.a * logit(p) + self.b)))
        return float(out) if np.ndim(out) == 0 else out

    def to_dict(self) -> dict:
        return {"method": "platt", "a": float(self.a), "b": float(self.b), "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Calibration":
        """From a model's metadata; None (a model logged before calibration) is the identity. ValueError when malformed."""
        if not d:
            return IDENTITY
        if not isinstance(d, dict) or d.get("method") != "platt":
            raise ValueError(f"unknown calibration {d!r:.200}; expected method platt")
        a, b = float(d["a"]), float(d["b"])
        if not (np.isfinite(a) and np.isfinite(b) and a > 0):
            raise ValueError(f"calibration a={a}, b={b}: a must be a positive number and b finite")
        return cls(a, b, str(d.get("fitted_on", "")))


IDENTITY = Calibration()


def decide(p_cal: float, threshold: float = 0.5, min_confidence: float = 0.0) -> tuple[str, float]:
    """(label, confidence) of a file from its calibrated p(male).

    ``confidence`` is the probability of the label reported: p for male, 1 - p for female, even when a
    threshold other than 0.5 reports a label the model finds less likely. Below ``min_confidence`` the
    label is ``uncertain`` (the confidence stays that of the label the threshold gave).
    """
    male = p_cal >= threshold
    confidence = p_cal if male else 1.0 - p_cal
    label = LABELS[int(male)]
    return (UNCERTAIN if confidence < min_confidence else label), confidence


# ----------------------------------------------------------------------------- fitting and measuring
def balance_weights(files: pd.DataFrame) -> np.ndarray:
    """Each corpus weighs the same, and within it each sex, and within that each speaker: the map must
    not be the one that suits a corpus with 60 clips per speaker."""
    keys = files["corpus"].astype(str) + "\t" + files["y"].astype(str)
    spk = files["speaker"].astype(str)
    w = 1.0 / spk.map(spk.value_counts()).to_numpy(float)  # a speaker's files share one unit
    per_group = pd.Series(w).groupby(keys.to_numpy()).transform("sum").to_numpy()
    w = w / per_group  # each corpus × sex group sums to 1
    return w * len(w) / w.sum()


def fit(files: pd.DataFrame, fitted_on: str = "", intercept: bool = False) -> Calibration:
    """Scaling of the logit of the files' pooled p (``files`` as ``train.file_level`` gives: p, y, corpus,
    speaker), with :func:`balance_weights`: scikit-learn's logistic regression on logit(p), nearly unpenalised
    (C=1e4: one or two parameters, thousands of files). The identity when both sexes are not there.

    By default the slope ``a`` only (``b = 0``, temperature scaling): the label at p = 0.5 stays the model's.
    An intercept (``intercept=True``, full Platt scaling) learns the bias of the corpora it is fitted on, which
    is not the next corpus's: on leave-one-corpus-out it cost held-out librispeech_100 1.2 points of accuracy
    for no better ECE anywhere (bench/results.md)."""
    if len(files) == 0 or files["y"].nunique() < 2:
        return Calibration(fitted_on=f"identity ({fitted_on}: one sex only)")
    from sklearn.linear_model import LogisticRegression

    x = logit(files["p"].to_numpy())[:, None]
    lr = LogisticRegression(C=1e4, max_iter=1000, fit_intercept=intercept).fit(x, files["y"].to_numpy(), sample_weight=balance_weights(files))
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0]) if intercept else 0.0
    if a <= 0:  # a model worse than chance on the held-out corpora: no map can fix that, keep its scale
        return Calibration(fitted_on=f"identity ({fitted_on}: slope {a:.3g} <= 0)")
    return Calibration(a, b, fitted_on)


def recalibrated(files: pd.DataFrame, cal: Calibration) -> pd.DataFrame:
    """``files`` with calibrated p and ``correct`` recomputed at 0.5."""
    out = files.copy()
    out["p"] = cal.apply(files["p"].to_numpy(np.float64))
    out["correct"] = (out["p"] >= 0.5).astype(int) == out["y"]
    return out


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the reported label: files binned by confidence (the probability of the
    label at 0.5) into ``bins`` equal-width bins over [0.5, 1]; the mean over files of |accuracy - confidence|
    of their bin. Written out because scikit-learn has the reliability curve but not this number."""
    p, y = np.asarray(p, np.float64), np.asarray(y)
    if len(p) == 0:
        return float("nan")
    conf = np.maximum(p, 1 - p)
    correct = (p >= 0.5).astype(int) == y
    idx = np.minimum(((conf - 0.5) * 2 * bins).astype(int), bins - 1)
    total = 0.0
    for k in np.unique(idx):
        m = idx == k
        total += m.sum() * abs(correct[m].mean() - conf[m].mean())
    return float(total / len(p))


def kept_at(p: np.ndarray, y: np.ndarray, thresholds=(0.6, 0.7, 0.8, 0.9, 0.95)) -> pd.DataFrame:
    """Accuracy and share of files kept when files below each confidence are set aside (``uncertain``)."""
    p, y = np.asarray(p, np.float64), np.asarray(y)
    conf = np.maximum(p, 1 - p)
    correct = (p >= 0.5).astype(int) == y
    rows = []
    for t in thresholds:
        m = conf >= t
        rows.append({"min_confidence": t, "kept": float(m.mean()) if len(m) else float("nan"),
                     "acc_kept": float(correct[m].mean()) if m.any() else float("nan")})
    return pd.DataFrame(rows)


def fit_for_point(held_out: dict[str, pd.DataFrame], val_files: pd.DataFrame | None, test_files: pd.DataFrame) -> tuple[Calibration, dict[str, float]]:
    """The calibration a grid point's model carries, and its metrics.

    ``held_out``: per training corpus, the file predictions of the point trained without it. The map (:func:`fit`) is
    fitted on all of them (else on ``val_files``). ``xval_ece.<corpus>`` is measured honestly: on corpus c,
    with a map fitted on the other corpora's held-out predictions only; ``test_ece`` on the test split,
    which fitted nothing. ``*_raw`` are the same before calibration.

    The map is carried only if it transfers: with two or more held-out corpora, when their mean ``xval_ece``
    is not below ``xval_ece_raw`` the model carries the identity (``calibration_kept`` 0). The held-out
    predictions come from models that saw one corpus fewer than the one registered, and a map fitted on
    them can make the registered model's confidence worse (it did, on leave-one-corpus-out: bench/results.md).
    """
    held = {c: f for c, f in held_out.items() if len(f)}
    m: dict[str, float] = {}
    per = []
    for c, f in sorted(held.items()):
        others = [g for k, g in held.items() if k != c]
        cal_c = fit(pd.concat(others, ignore_index=True), "others") if others else IDENTITY
        m[f"xval_ece.{c}"] = ece(cal_c.apply(f["p"].to_numpy()), f["y"])
        m[f"xval_ece_raw.{c}"] = ece(f["p"], f["y"])
        per.append(m[f"xval_ece.{c}"])
    if per:
        m["xval_ece"] = float(np.mean(per))
        m["xval_ece_raw"] = float(np.mean([m[f"xval_ece_raw.{c}"] for c in held]))
    if held:
        cal = fit(pd.concat(held.values(), ignore_index=True), fitted_on="held-out corpora " + ",".join(sorted(held)))
        if len(held) >= 2 and not m["xval_ece"] < m["xval_ece_raw"]:
            cal = Calibration(fitted_on=f"identity: a map fitted on other corpora did not lower their ECE "
                                        f"({m['xval_ece']:.4f} vs {m['xval_ece_raw']:.4f} uncalibrated)")
    else:
        cal = fit(val_files if val_files is not None else test_files.iloc[:0], fitted_on="validation speakers")
    m.update({"test_ece": ece(cal.apply(test_files["p"].to_numpy()), test_files["y"]), "test_ece_raw": ece(test_files["p"], test_files["y"]),
              "calibration_a": cal.a, "calibration_b": cal.b, "calibration_kept": float(cal != IDENTITY and cal.a != 1.0)})
    for c, f in sorted(test_files.groupby("corpus")):
        m[f"test_ece.{c}"] = ece(cal.apply(f["p"].to_numpy()), f["y"])
    return cal, m
