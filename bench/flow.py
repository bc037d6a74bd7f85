"""Time to a champion: the README's real-data flow (`make features` then `make train`) as a user gets it, timed.

Every corpus is featurized with both feature sets and featurize's defaults into a fresh folder (never the
accuracy section's incremental cache: a user starts with nothing), then the default grid (``jobs/grid.toml``,
read as ``jobs.train`` reads it) trains into a temporary SQLite MLflow store. Both steps run in this process
through the library (``pipeline.featurize_dir``, ``pipeline.train_grid``), the calls the jobs make.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

from voiceclf import pipeline

FEATURE_SETS = ("mfcc_pitch", "speaker_embedding")


def default_grids() -> dict[str, dict[str, list]]:
    """The training's own default grid (the file ``jobs.train`` reads when no --grid is given), not a copy."""
    from bench import loco

    return loco.read()


def run(sources: list[Path], scratch: Path, *, grids: dict[str, dict[str, list]] | None = None, variants: int = pipeline.VARIANTS,
        jobs: int = -1, device: str = "auto", log=print) -> dict:
    """Featurize ``sources`` into ``scratch/features`` (emptied first), train ``grids`` (default: the default grid)
    into a temporary SQLite store under ``scratch``; the wall times (s), the winner and its scores.

    Returns ``features_s``, ``train_s``, ``total_s`` (seconds), ``winner`` (grid point name), ``family``,
    ``xval_score`` (NaN with one training corpus), ``val_score``, ``test_score``, ``points``, ``device``, ``variants`` and ``files`` (per feature set).
    """
    grids = default_grids() if grids is None else grids
    feats = scratch / "features"
    shutil.rmtree(feats, ignore_errors=True)  # fresh: the flow's cost from nothing, not an incremental top-up
    feats.mkdir(parents=True)
    log(f"flow: featurize {len(sources)} source(s), {', '.join(FEATURE_SETS)}, variants={variants} → {feats} (fresh)")
    t0 = time.perf_counter()
    # allow_outside_paths: the --quick manifests list files of ../shared/data
    summ = pipeline.featurize_dir(sources, feats, FEATURE_SETS, variants=variants, jobs=jobs, allow_outside_paths=True)
    features_s = time.perf_counter() - t0
    log(f"flow: features in {features_s:.0f} s; training the default grid")
    with tempfile.TemporaryDirectory(dir=scratch, prefix="mlruns-") as store:
        t0 = time.perf_counter()
        out = pipeline.train_grid([feats], grids, tracking_uri=f"sqlite:///{Path(store) / 'mlflow.db'}", jobs=jobs, device=device)
        train_s = time.perf_counter() - t0
    w = out.winner
    res = {"features_s": features_s, "train_s": train_s, "total_s": features_s + train_s, "winner": w.point.name, "family": w.point.family,
           "xval_score": float(w.xval.get("xval_score", math.nan)), "val_score": float(w.best_epoch_metrics["val_score"]),
           "test_score": float(w.test["test_score"]), "points": len(out.table), "device": device, "variants": variants,
           "files": {s.feature_set: s.files for s in summ}}
    log(f"flow: train {train_s:.0f} s, total {res['total_s']:.0f} s; winner {res['winner']} (xval_score {res['xval_score']:.3f})")
    return res

