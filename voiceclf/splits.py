"""Speaker-disjoint splits: train/validation/test by speaker (stratified by corpus and sex, or one corpus held out),
the leave-one-corpus-out splits inside the training corpora, and a split's windows."""
from __future__ import annotations

import numpy as np
import pandas as pd

from voiceclf.config import LABELS, DataError
from voiceclf.dataset import Data

SPLITS = ("train", "val", "test")


def split_speakers(speakers: pd.DataFrame, fractions=(0.7, 0.15, 0.15), seed: int = 0, holdout_corpus: str | None = None) -> dict[str, list]:
    """Assign whole speakers to train/val/test, stratified by corpus × sex.

    ``speakers`` has one row per speaker with ``speaker``, ``label`` and ``corpus``. With
    ``holdout_corpus`` every speaker of that corpus is the test set and the others are split
    into train and validation in proportion. A corpus × sex group of fewer than 3 speakers goes
    to training whole (one speaker cannot stand for a group in three splits).

    Written by hand because scikit-learn's group splitters give k folds, not three proportions
    stratified by two variables, and none guarantees both sexes in every split for a handful of speakers.
    """
    spk = speakers.drop_duplicates("speaker")
    if spk["label"].nunique() < 2:
        raise DataError(f"only {LABELS[spk['label'].iloc[0]]} speakers in the data; training needs both sexes")
    out: dict[str, list] = {s: [] for s in SPLITS}
    fr = np.asarray(fractions, float)
    if holdout_corpus is not None:
        if holdout_corpus not in set(spk["corpus"]):
            raise DataError(f"the held-out corpus {holdout_corpus!r} is not in the data; corpora: {', '.join(sorted(set(spk['corpus'])))}")
        out["test"] = sorted(spk.loc[spk["corpus"] == holdout_corpus, "speaker"])
        spk = spk[spk["corpus"] != holdout_corpus]
        fr = np.array([fr[0], fr[1], 0.0]) / (fr[0] + fr[1])
    rng = np.random.default_rng(seed)
    for _, group in spk.sort_values(["corpus", "label", "speaker"]).groupby(["corpus", "label"], sort=True):
        ids = list(group["speaker"])
        if len(ids) < 3:
            out["train"] += ids
            continue
        rng.shuffle(ids)
        n_val = max(1, round(len(ids) * fr[1]))
        n_test = max(1, round(len(ids) * fr[2])) if fr[2] > 0 else 0
        out["val"] += ids[:n_val]
        out["test"] += ids[n_val : n_val + n_test]
        out["train"] += ids[n_val + n_test :]
    labels = dict(zip(speakers["speaker"], speakers["label"]))
    for s in SPLITS:
        missing = set(range(len(LABELS))) - {labels[x] for x in out[s]}
        if missing:
            raise DataError(f"the {s} split has no {LABELS[min(missing)]} speaker; a speaker-disjoint split needs at least 3 "
                            "speakers of each sex (in one corpus) outside the held-out corpus")
    return {s: sorted(v) for s, v in out.items()}


def cross_corpus_splits(split: dict[str, list], speakers: pd.DataFrame) -> dict[str, dict[str, list]]:
    """Leave-one-corpus-out inside the training corpora: for each corpus of the train and validation
    speakers, a split that trains (and picks epochs) on the other corpora and tests on all of its speakers.

    Empty when fewer than two corpora train. A corpus is left out of the rotation when the others
    cannot give both sexes to training and validation.
    """
    corpus_of = dict(zip(speakers["speaker"], speakers["corpus"]))
    label_of = dict(zip(speakers["speaker"], speakers["label"]))
    seen = split["train"] + split["val"]
    corpora = sorted({corpus_of[s] for s in seen})
    out = {}
    if len(corpora) < 2:
        return out
    for c in corpora:
        sub = {"train": [s for s in split["train"] if corpus_of[s] != c], "val": [s for s in split["val"] if corpus_of[s] != c],
               "test": sorted(s for s in seen if corpus_of[s] == c)}
        if all({label_of[s] for s in sub[k]} == {0, 1} for k in SPLITS):
            out[c] = sub
    return out


def split_masks(data: Data, split: dict[str, list]) -> dict[str, np.ndarray]:
    """Which of ``data``'s windows each split holds: augmented variants in training only."""
    real = data.variant == 0
    return {s: np.isin(data.speaker, split[s]) & (real | (s == "train")) for s in SPLITS}


def parts_of(data: Data, split: dict[str, list]) -> dict[str, Data]:
    """The split's windows (:func:`split_masks`), features included."""
    return {s: data.subset(mask) for s, mask in split_masks(data, split).items()}
