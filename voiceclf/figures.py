"""The figures logged beside a grid point's run: training curves and the confusion matrix.

matplotlib's object API only (``Figure``, never pyplot): no backend or window is chosen, and nothing
happens on import. matplotlib itself is imported in the functions, as score never draws (~0.5 s).
"""
from __future__ import annotations

import numpy as np

from voiceclf.config import LABELS


def accuracy_limits(values, pad_fraction: float = 0.08, min_pad: float = 0.005) -> tuple[float, float]:
    """The accuracy axis zoomed to the data: its range plus ``pad_fraction`` of it (at least ``min_pad``) each side,
    within [0, 1] but for half a pad above 1, so a curve at 1.0 is not drawn on the frame. On a 0-1 axis every
    curve of a good model was one flat line at the top."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not len(v):
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    pad = max(min_pad, pad_fraction * (hi - lo))
    return max(0.0, lo - pad), min(1.0 + pad / 2, hi + pad)


ACCURACY_KEYS = ("train_acc", "val_balanced_acc", "val_score", "val_worst_corpus")


def curves_figure(history: list[dict], title: str, best_epoch: int | None = None):
    """Loss and accuracy per epoch of one grid point (the metrics of ``history`` rows), the kept epoch marked.

    Constrained layout keeps the titles and legends inside the image (tight_layout ignores the figure title)."""
    epochs = np.arange(1, len(history) + 1)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8), layout="constrained")
    a, b = fig.subplots(1, 2)
    for key in ("train_loss", "val_loss"):
        a.plot(epochs, [h[key] for h in history], marker="o", label=key)
    keys = [k for k in ACCURACY_KEYS if all(k in h for h in history)]
    for key in keys:
        b.plot(epochs, [h[key] for h in history], marker="o", label=key)
    if best_epoch:
        for ax in (a, b):
            ax.axvline(best_epoch, color="grey", linestyle=":", label="kept epoch" if ax is b else None)
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy (axis zoomed to the values)",
          ylim=accuracy_limits([h[k] for h in history for k in keys]))
    a.legend(fontsize=8), b.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def confusion_figure(cm: np.ndarray, title: str):
    """A 2×2 confusion matrix in the labels' order (female, male): rows true, columns predicted.

    Drawn here rather than with scikit-learn's ConfusionMatrixDisplay, whose ``plot`` imports pyplot (a
    backend chosen for the whole process, a window where there is a display)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 3.8), layout="constrained")  # constrained: the title stays inside the image
    ax = fig.subplots()
    ax.imshow(cm, cmap="viridis")
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n < cm.max() / 2 else "black")
    ticks = range(len(LABELS))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=list(LABELS), yticklabels=list(LABELS), xlabel="predicted label", ylabel="true label")
    ax.set_title(wrap(title, width_in=fig.get_figwidth(), fontsize_pt=9), fontsize=9)
    return fig


def wrap(text: str, width_in: float, fontsize_pt: float = 9.0) -> str:
    """``text`` broken at spaces into lines that fit ``width_in`` inches at ``fontsize_pt`` points: matplotlib
    neither wraps a title nor shrinks it, and constrained layout cannot make a figure wider than it is."""
    import textwrap

    chars = max(10, int(width_in * 72 / (0.62 * fontsize_pt)))  # DejaVu Sans averages ~0.6 em per character
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines())


def reliability_figure(p_raw: np.ndarray, p_cal: np.ndarray, y: np.ndarray, title: str, bins: int = 10):
    """Reliability diagram of the reported label: per confidence bin (the probability of the label at 0.5),
    the share of files labelled right, before and after calibration; the diagonal is a perfectly honest
    confidence. Bin sizes as the marker's area."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.0), layout="constrained")  # constrained: the title stays inside the image
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
    ax.set_title(wrap(title, width_in=fig.get_figwidth(), fontsize_pt=9), fontsize=9)
    return fig
