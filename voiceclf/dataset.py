"""Training data: the windows of one FeatureConfig with their labels, speakers, corpora and files (:class:`Data`),
read from shard folders, one Data per feature set."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from voiceclf import shards
from voiceclf.config import LABELS, DataError, FeatureConfig


@dataclass
class Data:
    """Windows of one FeatureConfig with their labels and groups.

    x : (N, *cfg.shape) float32 windows.  y : (N,) int64, 0 female / 1 male.
    speaker : (N,) speaker ids, unique across corpora.  corpus : (N,) corpus names.
    file : (N,) one id per source file (windows are pooled per file when scoring).
    variant : (N,) 0 for a recording's own windows, k > 0 for its k-th augmented variant
        (training only: validation and test see real recordings).
    speech_s : (N,) seconds of its recording's speech each window adds to the windows before it (overlapping
        windows count their shared speech once), so a sum over windows is seconds of speech; None when unknown.
    """

    x: np.ndarray
    y: np.ndarray
    speaker: np.ndarray
    corpus: np.ndarray
    file: np.ndarray
    variant: np.ndarray
    cfg: FeatureConfig
    speaker_level: bool = True  # False: no speaker ids, the split falls back to files (optimistic)
    speech_s: np.ndarray | None = None

    @classmethod
    def from_shards(cls, rows: pd.DataFrame, x: np.ndarray, cfg: FeatureConfig) -> "Data":
        if rows["label"].isna().any():
            n = int(rows["label"].isna().sum())
            raise DataError(f"{n} windows have no label; training needs labelled features (featurize a labelled corpus)")
        unknown = set(rows["label"]) - set(LABELS)
        if unknown:
            raise DataError(f"unknown labels {sorted(unknown)}; expected {LABELS}")
        corpus = rows["corpus"].astype(str)
        file = (rows["source"] + "/" + rows["path"]).to_numpy()
        speaker_level = bool(rows["speaker"].notna().all())
        if speaker_level:
            # shards name speakers "<corpus>/<id>"; older shards gave the corpus's own id only
            spk = rows["speaker"].astype(str)
            prefixed = np.array([s.startswith(c + "/") for s, c in zip(spk, corpus)], dtype=bool)
            speaker = spk.where(prefixed, corpus + "/" + spk).to_numpy()
        else:
            speaker = file
        y = rows["label"].map({lab: i for i, lab in enumerate(LABELS)}).to_numpy(np.int64)
        variant = rows["variant"].to_numpy(np.int8)
        speech = new_speech_s(file, variant, rows["offset_s"].to_numpy(), rows["speech_s"].to_numpy()) if {"offset_s", "speech_s"} <= set(rows) else None
        return cls(x, y, speaker, corpus.to_numpy(), file, variant, cfg, speaker_level, speech)

    def subset(self, mask: np.ndarray) -> "Data":
        return Data(self.x[mask], self.y[mask], self.speaker[mask], self.corpus[mask], self.file[mask], self.variant[mask], self.cfg,
                    self.speaker_level, None if self.speech_s is None else self.speech_s[mask])

    def speakers(self) -> pd.DataFrame:
        """One row per speaker: speaker, label (int), corpus."""
        return pd.DataFrame({"speaker": self.speaker, "label": self.y, "corpus": self.corpus}).drop_duplicates("speaker")

    def fingerprint(self) -> str:
        """A short hash of which windows (files, labels) and config this data is."""
        h = hashlib.sha256(self.cfg.to_json().encode())
        for f, lab in sorted(set(zip(self.file.tolist(), self.y.tolist()))):
            h.update(f"{f}\t{lab}\n".encode())
        return h.hexdigest()[:16]


def new_speech_s(file: np.ndarray, variant: np.ndarray, offset_s: np.ndarray, speech_s: np.ndarray) -> np.ndarray:
    """Per window, the seconds of speech ``[offset_s, offset_s + speech_s]`` adds to the earlier windows of the same
    recording (``file``, ``variant``): windows overlap by half, so summing ``speech_s`` would count speech twice.

    Returns (N,) float64 seconds; its sum over a recording's windows is the length of the union of their speech.
    """
    df = pd.DataFrame({"key": pd.Series(file).astype(str) + "\x00" + pd.Series(variant).astype(str),
                       "start": np.asarray(offset_s, dtype=np.float64)})
    df["end"] = df["start"] + np.asarray(speech_s, dtype=np.float64)
    df = df.sort_values(["key", "start"], kind="stable")
    reached = df.groupby("key", sort=False)["end"].cummax().groupby(df["key"], sort=False).shift()  # furthest end so far
    added = (df["end"] - np.maximum(df["start"], reached.fillna(-np.inf))).clip(lower=0.0)
    out = np.zeros(len(df))
    out[df.index.to_numpy()] = added.to_numpy()
    return out


def feature_dirs(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """The shard folders: each given folder, or its sub-folders that hold shards (featurize of several sets)."""
    out = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise DataError(f"feature folder {d} does not exist (featurize first)")
        if shards.part_paths(d):
            out.append(d)
            continue
        subs = sorted(s for s in d.iterdir() if s.is_dir() and shards.part_paths(s))
        if not subs:
            raise DataError(f"feature folder {d} holds no shards (featurize first)")
        out += subs
    return out


def load_data(dirs: Sequence[str | os.PathLike]) -> tuple[dict[str, Data], dict[str, list[Path]]]:
    """One Data per feature set (directories of one set are concatenated), and the directories of each set."""
    groups: dict = {}
    for d in feature_dirs(dirs):
        groups.setdefault(shards.dir_config(d), []).append(d.resolve())
    by_set, dirs_of = {}, {}
    for cfg, ds in groups.items():
        if cfg.feature_set in by_set:
            raise DataError(f"{', '.join(map(str, ds))}: two different configs of feature set {cfg.feature_set}; pass folders of one config per set")
        rows, x, cfg = shards.read(ds)
        by_set[cfg.feature_set] = Data.from_shards(rows, x, cfg)
        dirs_of[cfg.feature_set] = ds
    return by_set, dirs_of


def all_speakers(data: dict[str, Data]) -> pd.DataFrame:
    """Every speaker of every feature set once: the split is the same for all families."""
    spk = pd.concat([d.speakers() for d in data.values()], ignore_index=True).drop_duplicates("speaker")
    return spk.sort_values("speaker", ignore_index=True)
