"""The figures logged beside a grid point's run: training curves and the confusion matrix.

matplotlib's object API only (``Figure``, never pyplot): no backend or window is chosen, and nothing
happens on import. matplotlib itself is imported in the functions, as score never draws (~0.5 s).
"""
from __future__ import annotations

import numpy as np

from voiceclf.config import LABELS


def curves_figure(history: list[dict], title: str, best_epoch: int | None = None):
    """Loss and accuracy per epoch of one grid point (the metrics of ``history`` rows), the kept epoch marked."""
    epochs = np.arange(1, len(history) + 1)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    a, b = fig.subplots(1, 2)
    for key in ("train_loss", "val_loss"):
        a.plot(epochs, [h[key] for h in history], marker="o", label=key)
    for key in ("train_acc", "val_balanced_acc", "val_score", "val_worst_corpus"):
        b.plot(epochs, [h[key] for h in history], marker="o", label=key)
    if best_epoch:
        for ax in (a, b):
            ax.axvline(best_epoch, color="grey", linestyle=":", label="kept epoch" if ax is b else None)
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    a.legend(), b.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def confusion_figure(cm: np.ndarray, title: str):
    """A 2×2 confusion matrix in the labels' order (female, male): rows true, columns predicted.

    Drawn here rather than with scikit-learn's ConfusionMatrixDisplay, whose ``plot`` imports pyplot (a
    backend chosen for the whole process, a window where there is a display)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.8, 3.4))
    ax = fig.subplots()
    ax.imshow(cm, cmap="viridis")
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n < cm.max() / 2 else "black")
    ticks = range(len(LABELS))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=list(LABELS), yticklabels=list(LABELS), xlabel="predicted label", ylabel="true label")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def reliability_figure(p_raw: np.ndarray, p_cal: np.ndarray, y: np.ndarray, title: str, bins: int = 10):
    """Reliability diagram of the reported label: per confidence bin (the probability of the label at 0.5),
    the share of files labelled right, before and after calibration; the diagonal is a perfectly honest
    confidence. Bin sizes as the marker's area."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.subplots()
    ax.plot([0.5, 1], [0.5, 1], color="grey", linestyle=":", label="honest")
    y = np.asarray(y)
    for p, name in ((np.asarray(p_raw, float), "raw"), (np.asarray(p_cal, float), "calibrated")):
        conf = np.maximum(p, 1 - p)
        correct = (p >= 0.5).astype(int) == y
        idx = np.minimum(((conf - 0.5) * 2 * bins).astype(int), bins - 1)
        ks = np.unique(idx)
        xs = [conf[idx == k].mean() for k in ks]
        ys = [correct[idx == k].mean() for k in ks]
        ns = np.array([(idx == k).sum() for k in ks], float)
        ax.plot(xs, ys, marker="o", label=name)
        ax.scatter(xs, ys, s=10 + 200 * ns / max(ns.sum(), 1), alpha=0.3)
    ax.set(xlabel="confidence (probability of the reported label)", ylabel="share labelled right", xlim=(0.5, 1.0), ylim=(0.0, 1.02))
    ax.legend(loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
