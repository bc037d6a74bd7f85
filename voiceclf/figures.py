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
