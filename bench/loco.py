"""Leave-one-corpus-out accuracy: train on the other corpora, test on the held-out one, per method.

Each model family runs its grid of ``jobs/grid.toml`` on the same speaker split the train job makes
with ``--holdout-corpus``; the point with the best ``val_score`` (validation speakers of the training
corpora, never the held-out corpus) is the one reported, exactly as the train job would pick it.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from voiceclf import shards
from voiceclf import train as tr
from voiceclf.config import REPO_ROOT

GRID_FILE = REPO_ROOT / "jobs" / "grid.toml"


def load(feature_dirs: dict[str, Path]) -> dict[str, tr.Data]:
    out = {}
    for fs, d in feature_dirs.items():
        rows, x, cfg = shards.read(d)
        out[fs] = tr.Data.from_shards(rows, x, cfg)
    return out


def default_points(data: dict[str, tr.Data], grid_file: Path = GRID_FILE, epochs: int | None = None) -> list[tr.GridPoint]:
    grids = tomllib.loads(grid_file.read_text())
    points = []
    for fs, d in sorted(data.items()):
        values = dict(grids.get(d.cfg.family, {}))
        if epochs:
            values["epochs"] = [epochs]
        points += tr.grid({k: v if isinstance(v, list) else [v] for k, v in values.items()}, fs)
    return points


def _train(point: tr.GridPoint, data: tr.Data, split: dict, threads: int) -> tr.PointResult:
    res = tr.train_point(point, data, split, seed=0, threads=threads)
    res.model = None  # weights stay in the worker: only numbers come back
    return res


@dataclass
class Fold:
    corpus: str
    results: dict = field(default_factory=dict)  # GridPoint -> PointResult


def run(data: dict[str, tr.Data], points: list[tr.GridPoint], n_jobs: int = -1, seed: int = 0, log=print) -> list[Fold]:
    """Every point on every held-out corpus, in parallel (one torch thread per task)."""
    speakers = pd.concat([d.speakers() for d in data.values()]).drop_duplicates("speaker")
    corpora = sorted(set(speakers["corpus"]))
    splits = {c: tr.split_speakers(speakers, seed=seed, holdout_corpus=c) for c in corpora}
    tasks = [(c, pt) for c in corpora for pt in points]
    n = n_jobs if n_jobs > 0 else os.cpu_count() or 1
    log(f"loco: {len(points)} point(s) × {len(corpora)} held-out corpora = {len(tasks)} trainings, {n} parallel")
    out = Parallel(n_jobs=n)(delayed(_train)(pt, data[pt.feature_set], splits[c], 1) for c, pt in tasks)
    folds = {c: Fold(c) for c in corpora}
    for (c, pt), res in zip(tasks, out):
        if res.error:
            raise RuntimeError(f"{pt.name} on held-out {c} failed:\n{res.error}")
        folds[c].results[pt] = res
    return list(folds.values())


def chosen(fold: Fold, family: str) -> tr.PointResult:
    """The family's point the train job would pick on this fold (best val_score, ties: lower val_loss)."""
    return tr.best([r for pt, r in fold.results.items() if pt.family == family])


def speaker_table(res: tr.PointResult) -> pd.DataFrame:
    return res.per_speaker


def summary(folds: list[Fold], families=tr.FAMILIES) -> pd.DataFrame:
    """One row per (held-out corpus, family): speaker-balanced accuracy, share of speakers ≥ 90 % right, worst speakers."""
    rows = []
    for f in folds:
        for fam in families:
            res = chosen(f, fam)
            if res is None:
                continue
            spk = res.per_speaker
            worst = spk.sort_values("acc").head(3)
            rows.append({
                "held_out": f.corpus, "method": fam, "point": res.point.name, "epoch": res.best_epoch,
                "val_score": res.final["val_score"], "speaker_bacc": res.test["test_score"],
                "file_bacc": res.test["test_balanced_acc"], "speakers_ge_90": float((spk["acc"] >= 0.9).mean()),
                "speakers": len(spk),
                "worst": "; ".join(f"{s} ({lab}) {a:.0%}" for s, lab, a in worst[["speaker", "label", "acc"]].itertuples(index=False)),
            })
    return pd.DataFrame(rows)
