"""train: grid search over the model families, every point an MLflow run, the best registered as champion.

Grid search over the model families on feature shards: the model card's CNN on MFC images (mfcc_pitch, mfcc_deltas)
and a small head on pretrained speaker embeddings (speaker_embedding). Splits by speaker into train/val/test
(stratified by corpus and sex), logs every grid point as a nested MLflow run (params, per-epoch curves, per-corpus
metrics, model, plots) and keeps each point's best epoch by val_score (speaker-balanced validation accuracy, mean
over corpora). With two or more training corpora each point is also trained without each corpus in turn and scored
on it (xval_score): the point that does best on corpora it never saw is registered. The new version becomes
models:/voiceclf@champion only if it is at least as good as the current champion on the same held-out speakers.

    python -m jobs.train --features DIR [DIR ...] [--grid FILE] [--holdout-corpus NAME] [--lr 1e-3,3e-4] ...
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from rich.markup import escape

from jobs import _cli
from jobs._cli import log
from voiceclf import pipeline, run_log, tracking
from voiceclf.points import GRID_KEYS  # the library's hyperparameters (read_grid checks them); some have a flag below

DEFAULT_GRID = Path(__file__).with_name("grid.toml")


def parse_args(argv=None) -> argparse.Namespace:
    p = _cli.parser(
        "train", __doc__,
        epilog="Tracking store: MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlruns/mlflow.db. "
        "Exit codes: 0 ok (also when the winner was not promoted), 1 failure (every grid point failed, tracking store "
        "unreachable), 2 bad arguments or data, 130 interrupted.",
    )
    p.add_argument("--features", nargs="+", required=True, type=Path, metavar="DIR",
                   help="featurize output folder(s), or a folder whose sub-folders are (as `make features` writes); "
                   "each feature set trains its family")
    p.add_argument("--grid", type=Path, default=DEFAULT_GRID, help="TOML grid file, one table per family (default %(default)s); CLI lists below override its keys for every family")
    p.add_argument("--lr", type=_cli.comma_list(float), help="learning rates, e.g. 1e-3,3e-4")
    p.add_argument("--epochs", type=_cli.comma_list(int), help="epoch counts, e.g. 10,20 (the best epoch by val_score is kept)")
    p.add_argument("--gamma", type=_cli.comma_list(float), help="StepLR decay factors, e.g. 0.5,0.7")
    p.add_argument("--batch-size", type=_cli.comma_list(int), help="batch sizes, e.g. 64")
    p.add_argument("--hidden", type=_cli.comma_list(int), help="embedding head hidden widths (0 = logistic regression), e.g. 0,64")
    p.add_argument("--no-feature-noise", action="store_true", help="turn off train-time perturbation in feature space")
    p.add_argument("--holdout-corpus", metavar="NAME", help="test on this corpus only and train/validate on the others (leave-one-corpus-out)")
    p.add_argument("--experiment", default=tracking.EXPERIMENT, help="MLflow experiment (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split and training (default %(default)s)")
    p.add_argument("--no-system-metrics", action="store_true",
                   help="do not log CPU, memory and GPU use (MLflow system metrics, every 2 s) to the runs")
    p.add_argument("--no-register", action="store_true", help="do not register the winner in the Model Registry")
    p.add_argument("--force-promote", action="store_true", help="make the winner the champion even if the current champion does better on the held-out speakers")
    p.add_argument("--tracking-uri", help="override MLFLOW_TRACKING_URI for this run")
    p.add_argument("-v", "--verbose", action="store_true")
    _cli.add_compute_args(p, workers="trainings in parallel, one on a GPU", device="where to train")
    return p.parse_args(argv)


def grids_of(args: argparse.Namespace) -> dict[str, dict]:
    """The grid file's tables with the CLI lists on top (for every family)."""
    overrides = {key: getattr(args, key) for key in GRID_KEYS if getattr(args, key, None)}
    if args.no_feature_noise:
        overrides["feature_noise"] = [False]
    return pipeline.read_grid(args.grid, overrides)


def run(args: argparse.Namespace) -> int:
    _cli.setup_logging(args.verbose)
    compute = _cli.compute(args)
    grids = grids_of(args)
    with _cli.progress_bars() as on_progress:  # library errors: exit codes of _cli's one table
        out = pipeline.train_grid(
            args.features, grids, holdout_corpus=args.holdout_corpus, experiment=args.experiment, tracking_uri=args.tracking_uri,
            seed=args.seed, **compute, system_metrics=not args.no_system_metrics, register=not args.no_register, force_promote=args.force_promote,
            on_progress=on_progress)
    show_table(out.table)
    w = out.winner
    if out.version is None:
        log.info("winner %s (run %s); not registered (--no-register)", w.point.name, out.winner_run_id)
    elif out.promoted:
        _cli.console.print(f"registered {tracking.MODEL_NAME} version {out.version} as [bold]models:/{tracking.MODEL_NAME}@{tracking.ALIAS}[/] "
                           f"({escape(w.point.name)}: test_score {w.test['test_score']:.3f}, run {out.winner_run_id}; {escape(str(out.reason))})", highlight=False, soft_wrap=True)
    else:
        log.warning("registered %s version %d WITHOUT the %s alias: %s (--force-promote overrides)", tracking.MODEL_NAME, out.version,
                    tracking.ALIAS, out.reason)
    return _cli.OK


TABLE_TITLE = "grid search (winner marked *; scores are speaker-balanced accuracy, mean over corpora)"


def show_table(table: pd.DataFrame) -> None:
    if not _cli.interactive():
        # a log record is one line (a name with a newline stays on one), so the table is one record per row, aligned
        log.info("%s:", TABLE_TITLE)
        for line in table.to_string(index=False, float_format=lambda v: f"{v:.4f}").splitlines():
            log.info("  %s", line)
        return
    from rich.table import Table

    t = Table(title=TABLE_TITLE)
    for c in table.columns:
        t.add_column(c)
    for row in table.itertuples(index=False):
        t.add_row(*[escape(run_log.cell(v)) for v in row])
    _cli.console.print(t)


def main(argv=None) -> None:
    _cli.main_wrapper("train", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    main()
