"""Stitch single-speaker clips into a conversation with known turns: the ground truth for turns, in tests and the bench.

A turn is one clip with its leading and trailing silence trimmed (by the featurizer's own voiced-region rule),
set to a common speech level (a conversation's voices come through one channel at comparable levels), and
followed by a short pause of low noise.
"""
from __future__ import annotations

import numpy as np

from voiceclf import features
from voiceclf.config import FeatureConfig


def trimmed(y: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """``y`` from its first voiced sample to its last (by :func:`voiceclf.features.voiced_intervals`); empty when silent."""
    iv = features.voiced_intervals(y, cfg)
    return y[iv[0, 0] : iv[-1, 1]] if len(iv) else y[:0]


def stitch(clips: list[np.ndarray], labels: list[str], rng: np.random.Generator, *, pause_s: tuple[float, float] = (0.2, 0.8),
           level_dbfs: float = -23.0, noise_db: float = -65.0, sample_rate: int = 16000,
           cfg: FeatureConfig = FeatureConfig()) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """One waveform of the clips in order, and its turns ``(start_s, end_s, label)``.

    clips : mono float waveforms at ``sample_rate``.  labels : each clip's label.  pause_s : a pause before
    every turn and after the last, drawn uniformly from this range, in seconds.  level_dbfs : RMS of every
    trimmed clip.  noise_db : RMS of the background noise under the whole conversation, in dBFS: far enough
    below the speech that the featurizer's voiced-region rule (``top_db`` below the loudest frame) finds the pauses.
    """
    pieces, turns, pos = [], [], 0
    for y, label in zip(clips, labels):
        y = trimmed(np.asarray(y, np.float32), cfg)
        if len(y) == 0:
            continue
        y = y * np.float32(10 ** (level_dbfs / 20) / max(float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))), 1e-9))
        gap = int(rng.uniform(*pause_s) * sample_rate)
        pieces += [np.zeros(gap, np.float32), y]
        turns.append(((pos + gap) / sample_rate, (pos + gap + len(y)) / sample_rate, label))
        pos += gap + len(y)
    pieces.append(np.zeros(int(rng.uniform(*pause_s) * sample_rate), np.float32))
    out = np.concatenate(pieces)
    out += (rng.standard_normal(len(out)) * 10 ** (noise_db / 20)).astype(np.float32)
    return np.clip(out, -1.0, 1.0).astype(np.float32), turns
