"""The embedding head's ``lbfgs`` solver: a logistic regression on one mean embedding per recording.

Fitted by scikit-learn to convergence and stored in the same :class:`voiceclf.model.EmbeddingHead` the Adam
solver trains, so the model format and score are the same whichever solver made it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from voiceclf.dataset import Data
from voiceclf.model import build_model
from voiceclf.points import GridPoint
from voiceclf.train import sample_weights


def pool_files(data: Data) -> Data:
    """One row per recording and augmented variant: the mean of its windows (its other columns are the same)."""
    keys = pd.Series(data.file).astype(str) + "\t" + pd.Series(data.variant).astype(str)
    codes, uniq = pd.factorize(keys)
    sums = np.zeros((len(uniq), *data.x.shape[1:]), np.float64)
    np.add.at(sums, codes, data.x)
    first = np.unique(codes, return_index=True)[1]
    x = (sums / np.bincount(codes).reshape(-1, *[1] * (data.x.ndim - 1))).astype(np.float32)
    return Data(x, data.y[first], data.speaker[first], data.corpus[first], data.file[first], data.variant[first], data.cfg, data.speaker_level)


def fit_pooled_logistic(point: GridPoint, tr: Data) -> torch.nn.Module:
    """An EmbeddingHead (hidden 0) holding scikit-learn's L2 logistic regression fitted on one mean embedding per
    recording and variant, standardised, with the balance weights of :func:`sample_weights` (scaled to sum to the
    number of rows, so C means what it means in scikit-learn).

    A convex fit to convergence, with L2 far stronger than Adam's weight decay gives; on leave-one-corpus-out it was
    better calibrated than the window-trained head everywhere and more accurate on two held-out corpora of three
    (bench/results.md, issue 18), so it is in the grid only when asked for. Its two logits are ±(w·x + b)/2, so
    softmax gives sigmoid(w·x + b), the regression's p."""
    from sklearn.linear_model import LogisticRegression

    files = pool_files(tr)
    model = build_model(tr.cfg, hidden=0).fit_standardisation(files.x)
    xs = (files.x - model.mean.numpy()) / model.std.numpy()
    w = sample_weights(files, point.balance)
    lr = LogisticRegression(C=point.C, max_iter=5000).fit(xs, files.y, sample_weight=w * len(w) / w.sum())
    coef, bias = torch.from_numpy(lr.coef_[0].astype(np.float32)), float(lr.intercept_[0])
    with torch.no_grad():
        layer = model.net[0]
        layer.weight.copy_(torch.stack([-coef / 2, coef / 2]))
        layer.bias.copy_(torch.tensor([-bias / 2, bias / 2]))
    return model.eval()
