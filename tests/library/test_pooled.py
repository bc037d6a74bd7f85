"""The embedding head's lbfgs solver (issue 18): a logistic regression on one mean embedding per recording,
checked against scikit-learn fitted by hand on the same pooled rows."""
import numpy as np
import pandas as pd
import pytest
import torch

from voiceclf import train as tr
from voiceclf.config import FeatureConfig
from voiceclf.dataset import Data
from voiceclf.model import p_male
from voiceclf.points import GridError, GridPoint, expand
from voiceclf.splits import split_speakers


def embedding_data(seed: int = 0) -> Data:
    """40 speakers in two corpora, 1-3 windows per recording, recordings with an augmented variant; the sex in a
    few of the 256 dimensions."""
    rng = np.random.default_rng(seed)
    cfg = FeatureConfig.for_feature_set("speaker_embedding")
    rows = []
    for s in range(40):
        sex, corpus = s % 2, f"c{s % 4 // 2}"
        voice = rng.normal(0, 1, 256) + 3.0 * sex * np.r_[np.ones(8), np.zeros(248)]
        for f in range(int(rng.integers(2, 6))):
            for variant in (0, 1):
                for _ in range(int(rng.integers(1, 4))):
                    rows.append((voice + rng.normal(0, 1.5, 256), sex, f"{corpus}/{s}", corpus, f"/d/{s}_{f}.wav", variant))
    x, y, spk, corpus, file, variant = map(np.array, zip(*rows))
    return Data(x.astype(np.float32), y.astype(np.int64), spk, corpus, file, variant.astype(np.int8), cfg)


def test_the_lbfgs_point_is_sklearns_logistic_regression_on_pooled_embeddings():
    from sklearn.linear_model import LogisticRegression

    data = embedding_data()
    split = split_speakers(data.speakers())
    point = GridPoint(feature_set="speaker_embedding", solver="lbfgs", C=0.05)
    res = tr.train_point(point, data, split)
    assert res.error is None, res.error
    assert res.best_epoch == 1 and len(res.history) == 1 and res.test["test_score"] > 0.8

    # the reference, written from the definition: per (recording, variant) the mean window, standardised
    # (train rows' mean, unbiased std), each speaker's rows sharing one weight, each sex half of the total
    train = data.subset(np.isin(data.speaker, split["train"]))
    df = pd.DataFrame(train.x.astype(np.float64)).assign(file=train.file, variant=train.variant, y=train.y, speaker=train.speaker)
    pooled = df.groupby(["file", "variant"], sort=False).mean(numeric_only=True)
    meta = df.groupby(["file", "variant"], sort=False)[["speaker"]].first()
    x = pooled.drop(columns=["y"]).to_numpy()
    y = pooled["y"].to_numpy().astype(int)
    mean, std = x.mean(0), x.std(0, ddof=1)
    n_of = meta["speaker"].map(meta["speaker"].value_counts()).to_numpy()
    w = 1.0 / n_of
    for lab in (0, 1):
        w[y == lab] /= w[y == lab].sum()
    ref = LogisticRegression(C=0.05, max_iter=5000).fit((x - mean) / std, y, sample_weight=w * len(w) / w.sum())

    test = data.subset(np.isin(data.speaker, split["test"]))
    got = p_male(res.model, test.x)
    want = ref.predict_proba((test.x - mean) / std)[:, 1]
    np.testing.assert_allclose(got, want, atol=2e-4)
    assert isinstance(res.model, torch.nn.Module) and tuple(res.model.net[0].weight.shape) == (2, 256)


def test_the_grid_trains_an_lbfgs_point_once_and_only_for_the_embedding_head():
    pts = expand({"solver": ["adam", "lbfgs"], "hidden": [0, 64], "lr": [1e-3, 1e-4], "C": [1e-3]}, "speaker_embedding")
    assert sorted(p.name for p in pts if p.solver == "lbfgs") == ["speaker_embedding pooled logistic C=0.001"]
    assert len([p for p in pts if p.solver == "adam"]) == 4
    with pytest.raises(GridError):
        expand({"solver": ["lbfgs"]}, "mfcc_pitch")
    with pytest.raises(GridError):
        expand({"solver": ["sgd"]}, "speaker_embedding")
