"""Leave-one-corpus-out accuracy: train on the other corpora, test on the held-out one, per method.

For each corpus C, the grid of ``jobs/grid.toml`` runs exactly as ``jobs.train --holdout-corpus C`` runs it: the
library's own grid run (``voiceclf.grid.run_grid``: the grid file read and checked by ``read_grid``, the same speaker
split, the same cross-corpus validation inside the training corpora, the point the train job would pick, never
chosen on the held-out corpus, calibrated as the train job calibrates it), without MLflow. The pitch baseline fits
one threshold on the median pyin F0 of the training corpora's files.

    python -m bench.loco [--features /work/feat] [--sets mfcc_pitch,speaker_embedding] [--quick] [--jobs N] [--device auto|cpu|cuda]
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from voiceclf import grid, safeio
from jobs.train import DEFAULT_GRID
from voiceclf.dataset import Data, all_speakers, load_data
from voiceclf.metrics import per_speaker, speaker_balanced
from voiceclf.points import FAMILIES, GridPoint
from voiceclf.train import PointResult, best

GRID_FILE = DEFAULT_GRID  # the train job's own file, not a path written again
PYIN_FMIN, PYIN_FMAX = 60.0, 400.0
QUICK_EPOCHS = 2  # bench.run --quick and --quick here: every family's epochs


def load(feature_dirs: dict[str, Path]) -> dict[str, Data]:
    """One Data per feature set, from its shard folder (the train job's loader)."""
    return load_data(list(feature_dirs.values()))[0]


def read(grid_file: Path = GRID_FILE, epochs: int | None = None) -> dict[str, dict[str, list]]:
    """The train job's grid, read and checked as the job reads it; ``epochs`` (a quick run's) for every family."""
    return grid.read_grid(grid_file, {"epochs": [epochs]} if epochs else None)


@dataclass
class Fold:
    """One held-out corpus: the grid run that held it out."""

    corpus: str
    outcome: grid.GridOutcome

    @property
    def results(self) -> dict[GridPoint, PointResult]:
        """Each point's result on this fold, calibrated, with its cross-corpus scores."""
        return dict(zip(self.outcome.plan.points, self.outcome.results))


def run(data: dict[str, Data], grids: dict[str, dict[str, list]], n_jobs: int = -1, seed: int = 0, device: str = "cpu", log=print) -> list[Fold]:
    """Every point on every held-out corpus with its cross-corpus validation trainings (``grid.run_grid`` with that
    corpus held out), in parallel on the CPU, one at a time on a GPU (as the train job does)."""
    corpora = sorted(set(all_speakers(data)["corpus"]))
    folds = []
    for c in corpora:
        out = grid.run_grid(data, grids, holdout_corpus=c, seed=seed, jobs=n_jobs, device=device)
        log(f"loco: held-out {c}: {len(out.plan.points)} point(s), {len(out.plan.tasks)} trainings with cross-corpus validation, "
            f"{out.plan.n_jobs} parallel")
        failed = next((r for r in out.results if r.error), None)
        if failed is not None:
            raise RuntimeError(f"{failed.point.name} on held-out {c} failed:\n{failed.error}")
        folds.append(Fold(c, out))
    return folds


def chosen(fold: Fold, family: str | None = None) -> PointResult | None:
    """The point the train job would pick on this fold, among all points or one family's."""
    return best([r for pt, r in fold.results.items() if family is None or pt.family == family])


def _row(corpus: str, method: str, spk: pd.DataFrame, score: float, extra: dict) -> dict:
    worst = spk.sort_values("acc").head(3)
    return {"held_out": corpus, "method": method, "speaker_bacc": score, "speakers_ge_90": float((spk["acc"] >= 0.9).mean()),
            "speakers": len(spk), **extra,
            "worst": "; ".join(f"{s.split('/')[-1]} ({lab[0]}) {a:.0%}" for s, lab, a in worst[["speaker", "label", "acc"]].itertuples(index=False))}


def summary(folds: list[Fold]) -> pd.DataFrame:
    """One row per (held-out corpus, method): each family's pick, and the champion (the pick across families)."""
    rows = []
    for f in folds:
        for fam in (None, *FAMILIES):
            res = chosen(f, fam)
            if res is None:
                continue
            rows.append(_row(f.corpus, f"champion ({res.point.family})" if fam is None else fam, res.per_speaker, res.test["test_score"],
                             {"point": res.point.name, "epoch": res.best_epoch, "xval_score": res.xval.get("xval_score", np.nan),
                              "val_score": res.best_epoch_metrics["val_score"]}))
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


def pitch_table(data: Data, cache: Path, n_jobs: int = -1, log=print) -> pd.DataFrame:
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
        spk = per_speaker(test)
        rows.append(_row(c, "pitch threshold (pyin)", spk, speaker_balanced(spk), {"point": f"male below {thr:.0f} Hz"}))
    return rows


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, percentages with one decimal."""
    cols = ["held_out", "method", "speaker_bacc", "speakers_ge_90", "speakers", "point", "worst"]
    lines = ["| held-out corpus | method | speaker-balanced acc | speakers ≥ 90 % right | speakers | chosen point | worst speakers |",
             "|---|---|---|---|---|---|---|"]
    for r in table[cols].itertuples(index=False):
        lines.append(f"| {r.held_out} | {r.method} | {100 * r.speaker_bacc:.1f} % | {100 * r.speakers_ge_90:.1f} % | {r.speakers} | {r.point} | {r.worst} |")
    return "\n".join(lines)


def ranking(folds: list[Fold]) -> pd.DataFrame:
    """Every point of every fold, best first within a fold: the ranking the train job would make, and how each did."""
    rows = []
    for f in folds:
        for rank, r in enumerate(f.outcome.ranked, 1):
            rows.append({"held_out": f.corpus, "rank": rank, "point": r.point.name, "epoch": r.best_epoch, "xval_score": r.xval.get("xval_score", np.nan),
                         "val_score": r.best_epoch_metrics["val_score"], "test_score": r.test["test_score"], "test_ece": r.test.get("test_ece", np.nan)})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.loco", description="Leave-one-corpus-out accuracy of the default grid (jobs/grid.toml) on "
                                "existing shards, without MLflow: per held-out corpus, the grid's ranking and each family's pick.")
    p.add_argument("--features", type=Path, default=Path("/work/feat"), help="a folder of one shard folder per feature set (default %(default)s)")
    p.add_argument("--sets", default="mfcc_pitch,speaker_embedding", help="feature sets to train on, comma-separated (default %(default)s)")
    p.add_argument("--grid", type=Path, default=GRID_FILE, help="TOML grid file (default %(default)s)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs for every family, as bench.run --quick")
    p.add_argument("--jobs", type=int, default=-1, help="trainings in parallel (-1 = all cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="where to train (default %(default)s)")
    args = p.parse_args(argv)
    data = load({fs: args.features / fs for fs in args.sets.split(",") if fs.strip()})
    folds = run(data, read(args.grid, QUICK_EPOCHS if args.quick else None), n_jobs=args.jobs, device=args.device)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 70):
        print(ranking(folds).to_string(index=False, float_format=lambda v: f"{v:.6f}"))
    print()
    print(markdown(summary(folds)))


if __name__ == "__main__":
    # through the package module, so joblib workers import the worker functions by name
    from bench.loco import main as _main

    _main()
