"""Leave-one-corpus-out accuracy: train on the other corpora, test on the held-out one, per method.

Each model family runs its grid of ``jobs/grid.toml`` exactly as ``jobs.train --holdout-corpus C``
would: the same speaker split, the same cross-corpus validation inside the training corpora, and the
point the train job would pick (never chosen on the held-out corpus), calibrated as the train job calibrates
it (on the training corpora's cross-corpus predictions). The pitch baseline fits one
threshold on the median pyin F0 of the training corpora's files.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from voiceclf import safeio, shards
from voiceclf import train as tr
from voiceclf.config import REPO_ROOT

GRID_FILE = REPO_ROOT / "jobs" / "grid.toml"
PYIN_FMIN, PYIN_FMAX = 60.0, 400.0


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


def _train(point: tr.GridPoint, data: tr.Data, split: dict, threads: int, device: str = "cpu") -> tr.PointResult:
    res = tr.train_point(point, data, split, seed=0, threads=threads, device=device)
    res.model = None  # weights stay in the worker: only numbers come back
    return res


@dataclass
class Fold:
    corpus: str
    results: dict = field(default_factory=dict)  # GridPoint -> PointResult (with its xval filled in)


def run(data: dict[str, tr.Data], points: list[tr.GridPoint], n_jobs: int = -1, seed: int = 0, device: str = "cpu", log=print) -> list[Fold]:
    """Every point on every held-out corpus with its cross-corpus validation trainings, in parallel on the CPU,
    one at a time on a GPU (as ``train_grid`` does: one device shared by parallel trainings gains nothing)."""
    speakers = pd.concat([d.speakers() for d in data.values()]).drop_duplicates("speaker")
    corpora = sorted(set(speakers["corpus"]))
    tasks = []
    for c in corpora:
        split = tr.split_speakers(speakers, seed=seed, holdout_corpus=c)
        for sub_name, sub in [(None, split), *tr.cross_corpus_splits(split, speakers).items()]:
            tasks += [(c, sub_name, pt, sub) for pt in points]
    device = str(tr.pick_device(device))
    n = 1 if device != "cpu" else n_jobs if n_jobs > 0 else os.cpu_count() or 1
    log(f"loco: {len(points)} point(s) × {len(corpora)} held-out corpora, with cross-corpus validation: {len(tasks)} trainings, {n} parallel")
    out = Parallel(n_jobs=n)(delayed(_train)(pt, data[pt.feature_set], sub, 1, device) for _, _, pt, sub in tasks)
    folds = {c: Fold(c) for c in corpora}
    xres: dict = {}
    for (c, sub_name, pt, _), res in zip(tasks, out):
        if res.error:
            raise RuntimeError(f"{pt.name} on held-out {c} ({sub_name or 'main'}) failed:\n{res.error}")
        if sub_name is None:
            folds[c].results[pt] = res
        else:
            xres.setdefault((c, pt), {})[sub_name] = res
    from voiceclf.champion import calibrate_point

    for (c, pt), per in xres.items():  # the calibration train_grid would fit and register, and the xval scores
        calibrate_point(folds[c].results[pt], per)
    return list(folds.values())


def chosen(fold: Fold, family: str | None = None) -> tr.PointResult | None:
    """The point the train job would pick on this fold, among all points or one family's."""
    return tr.best([r for pt, r in fold.results.items() if family is None or pt.family == family])


def _row(corpus: str, method: str, spk: pd.DataFrame, score: float, extra: dict) -> dict:
    worst = spk.sort_values("acc").head(3)
    return {"held_out": corpus, "method": method, "speaker_bacc": score, "speakers_ge_90": float((spk["acc"] >= 0.9).mean()),
            "speakers": len(spk), **extra,
            "worst": "; ".join(f"{s.split('/')[-1]} ({lab[0]}) {a:.0%}" for s, lab, a in worst[["speaker", "label", "acc"]].itertuples(index=False))}


def summary(folds: list[Fold]) -> pd.DataFrame:
    """One row per (held-out corpus, method): each family's pick, and the champion (the pick across families)."""
    rows = []
    for f in folds:
        for fam in (None, *tr.FAMILIES):
            res = chosen(f, fam)
            if res is None:
                continue
            rows.append(_row(f.corpus, f"champion ({res.point.family})" if fam is None else fam, res.per_speaker, res.test["test_score"],
                             {"point": res.point.name, "epoch": res.best_epoch, "xval_score": res.xval.get("xval_score", np.nan),
                              "val_score": res.final["val_score"]}))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- pitch baseline
def f0_of_files(paths: list[str]) -> list[float]:
    """Worker: median pyin F0 (Hz) over the voiced frames of each file, after the project's own decoding and clean-up."""
    import librosa
    from threadpoolctl import threadpool_limits

    from voiceclf import audio

    out = []
    with threadpool_limits(limits=1):
        for path in paths:
            try:
                y = audio.load(path).samples
                f0, voiced, _ = librosa.pyin(y, fmin=PYIN_FMIN, fmax=PYIN_FMAX, sr=16000)
                out.append(float(np.median(f0[voiced])) if voiced.any() else float("nan"))
            except Exception:
                out.append(float("nan"))
    return out


def pitch_table(data: tr.Data, cache: Path, n_jobs: int = -1, log=print) -> pd.DataFrame:
    """One row per recording (file, speaker, corpus, y, f0), F0 cached in ``cache`` (parquet) by file."""
    files = pd.DataFrame({"file": data.file, "speaker": data.speaker, "corpus": data.corpus, "y": data.y})[data.variant == 0].drop_duplicates("file")
    have = pd.read_parquet(cache) if cache.exists() else pd.DataFrame({"file": pd.Series(dtype=str), "f0": pd.Series(dtype=float)})
    todo = sorted(set(files["file"]) - set(have["file"]))
    if todo:
        log(f"pyin F0 of {len(todo)} recordings")
        size = 16
        parts = Parallel(n_jobs=n_jobs)(delayed(f0_of_files)(todo[i : i + size]) for i in range(0, len(todo), size))
        new = pd.DataFrame({"file": todo, "f0": [v for p in parts for v in p]})
        have = pd.concat([have, new], ignore_index=True) if len(have) else new
        safeio.write_parquet(have, cache)
    return files.merge(have, on="file", how="left")


def fit_threshold(f0: np.ndarray, y: np.ndarray) -> float:
    """The F0 threshold (Hz) maximising balanced accuracy of "male when F0 < threshold"; no F0 counts as 0 Hz."""
    f = np.nan_to_num(f0, nan=0.0)
    u = np.unique(f)
    cand = np.concatenate([[u[0] - 1], (u[1:] + u[:-1]) / 2, [u[-1] + 1]])
    pred = f[None, :] < cand[:, None]
    tpr = (pred & (y == 1)).sum(1) / max(int((y == 1).sum()), 1)
    tnr = (~pred & (y == 0)).sum(1) / max(int((y == 0).sum()), 1)
    return float(cand[np.argmax((tpr + tnr) / 2)])


def pitch_rows(pitch: pd.DataFrame) -> list[dict]:
    """The pitch-threshold baseline, leave-one-corpus-out: threshold fitted on the other corpora's recordings."""
    rows = []
    for c in sorted(set(pitch["corpus"])):
        train, test = pitch[pitch["corpus"] != c], pitch[pitch["corpus"] == c].copy()
        thr = fit_threshold(train["f0"].to_numpy(), train["y"].to_numpy())
        test["p"] = (np.nan_to_num(test["f0"].to_numpy(), nan=0.0) < thr).astype(float)
        test["correct"] = (test["p"] >= 0.5).astype(int) == test["y"]
        spk = tr.per_speaker(test)
        rows.append(_row(c, "pitch threshold (pyin)", spk, tr.speaker_balanced(spk), {"point": f"male below {thr:.0f} Hz"}))
    return rows


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, percentages with one decimal."""
    cols = ["held_out", "method", "speaker_bacc", "speakers_ge_90", "speakers", "point", "worst"]
    lines = ["| held-out corpus | method | speaker-balanced acc | speakers ≥ 90 % right | speakers | chosen point | worst speakers |",
             "|---|---|---|---|---|---|---|"]
    for r in table[cols].itertuples(index=False):
        lines.append(f"| {r.held_out} | {r.method} | {100 * r.speaker_bacc:.1f} % | {100 * r.speakers_ge_90:.1f} % | {r.speakers} | {r.point} | {r.worst} |")
    return "\n".join(lines)
