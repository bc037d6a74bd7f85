"""train: grid search over the model-card CNN, every point an MLflow run, the best registered as champion.

    python -m jobs.train --features DIR [DIR ...] [--grid FILE] [--lr 1e-3,3e-4] ...
"""
from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from jobs import _cli
from jobs._cli import JobError, log
from voiceclf import parallel, shards, tracking
from voiceclf import train as tr
from voiceclf.config import ConfigError

DEFAULT_GRID = Path(__file__).with_name("grid.toml")


def _list(cast):
    def parse(text: str):
        try:
            return [cast(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {cast.__name__}, got {text!r}") from None
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jobs.train",
        description="Grid search over the model-card CNN on feature shards. Splits by speaker into train/val/test, "
        "logs every grid point as a nested MLflow run (params, per-epoch curves, model, plots) and registers the best "
        "(highest val_balanced_acc) as models:/voiceclf@champion.",
        epilog="Tracking store: MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlruns/mlflow.db. "
        "Exit codes: 0 ok, 1 failure (every grid point failed, tracking store unreachable), 2 bad arguments or data.",
    )
    p.add_argument("--features", nargs="+", required=True, type=Path, metavar="DIR", help="featurize output folder(s); two feature sets add a grid dimension")
    p.add_argument("--grid", type=Path, default=DEFAULT_GRID, help="TOML grid file (default %(default)s); CLI lists below override its keys")
    p.add_argument("--lr", type=_list(float), help="learning rates, e.g. 1e-3,3e-4")
    p.add_argument("--epochs", type=_list(int), help="epoch counts, e.g. 10,20")
    p.add_argument("--gamma", type=_list(float), help="StepLR decay factors (step 5 epochs), e.g. 0.5,0.7")
    p.add_argument("--batch-size", type=_list(int), help="batch sizes, e.g. 64")
    p.add_argument("--no-augment", action="store_true", help="turn off train-time feature augmentation")
    p.add_argument("--experiment", default=tracking.EXPERIMENT, help="MLflow experiment (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split and training (default %(default)s)")
    p.add_argument("--jobs", type=int, default=-1, help="grid points trained in parallel (-1 = all cores; default %(default)s)")
    p.add_argument("--backend", choices=parallel.BACKENDS, default="loky", help="joblib backend (default %(default)s)")
    p.add_argument("--scheduler", help="Dask scheduler address for --backend dask")
    p.add_argument("--no-register", action="store_true", help="do not register the winner in the Model Registry")
    p.add_argument("--tracking-uri", help="override MLFLOW_TRACKING_URI for this run")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.jobs == 0:
        p.error("--jobs must be -1 (all cores) or >= 1")
    return args


def load_grid(args) -> dict:
    try:
        values = tomllib.loads(args.grid.read_text())
    except FileNotFoundError:
        raise JobError(f"grid file {args.grid} does not exist", _cli.USAGE) from None
    except tomllib.TOMLDecodeError as e:
        raise JobError(f"grid file {args.grid}: {e}", _cli.USAGE) from None
    for key in ("lr", "epochs", "gamma", "batch_size"):
        cli = getattr(args, key)
        if cli:
            values[key] = cli
        v = values.get(key)
        if not isinstance(v, list) or not v:
            raise JobError(f"grid: {key} must be a non-empty list (in {args.grid} or --{key.replace('_', '-')})", _cli.USAGE)
    values["augment"] = bool(values.get("augment", True)) and not args.no_augment
    return values


def load_data(dirs: list[Path]) -> dict[str, tr.Data]:
    """One Data per feature set; directories of one set are concatenated."""
    groups: dict = {}
    try:
        for d in dirs:
            if not d.is_dir():
                raise JobError(f"feature folder {d} does not exist (run `make features` first)", _cli.USAGE)
            cfg = shards.dir_config(d)
            if cfg is None:
                raise JobError(f"feature folder {d} holds no shards (run `make features` first)", _cli.USAGE)
            groups.setdefault(cfg, []).append(d)
        by_set = {}
        for cfg, ds in groups.items():
            if cfg.feature_set in by_set:
                raise JobError(f"{', '.join(map(str, ds))}: two different configs of feature set {cfg.feature_set}; pass folders of one config per set", _cli.USAGE)
            rows, x, cfg = shards.read(ds)
            by_set[cfg.feature_set] = tr.Data.from_shards(rows, x, cfg)
        return by_set
    except (shards.ShardError, ConfigError, tr.DataError) as e:
        raise JobError(str(e), _cli.USAGE) from None


def run_point(point: tr.GridPoint, data: dict, split: dict, seed: int, threads: int) -> tr.PointResult:
    return tr.train_point(point, data[point.feature_set], split, seed=seed, threads=threads)


def run(args: argparse.Namespace) -> int:
    _cli.setup_logging(args.verbose)
    values = load_grid(args)
    try:
        uri = tracking.connect(args.tracking_uri)
    except tracking.TrackingError as e:
        raise JobError(str(e), _cli.FAILURE) from None
    data = load_data(args.features)
    first = next(iter(data.values()))
    if not first.speaker_level:
        log.warning("NO SPEAKER IDS: splitting by file, so the same voice can sit in train and test and the scores will be optimistic")
    try:
        split = tr.split_speakers(first.speaker, first.y, seed=args.seed)
    except tr.DataError as e:
        raise JobError(str(e), _cli.USAGE) from None
    points = tr.grid(values["lr"], values["epochs"], values["gamma"], values["batch_size"], sorted(data), values["augment"])
    n_jobs = min(len(points), os.cpu_count() or 1) if args.jobs == -1 else min(args.jobs, len(points))
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    sizes = {f"split_{s}_{k}": int(v) for s in tr.SPLITS for k, v in (("speakers", len(split[s])), ("windows", np.isin(first.speaker, split[s]).sum()))}
    common = {"seed": args.seed, "data_fingerprint": first.fingerprint(), "speaker_level_split": first.speaker_level, **sizes}
    log.info("train: %d grid point(s) on %d windows, %d/%d/%d speakers (train/val/test), %d parallel, tracking %s",
             len(points), len(first.y), len(split["train"]), len(split["val"]), len(split["test"]), n_jobs, uri)

    store_errors = tracking.store_errors()
    try:
        runs = tracking.GridRuns.start(args.experiment, f"grid-{len(points)}pts", {**common, "grid_points": len(points), **{f"grid_{k}": v for k, v in values.items()}, "features": ",".join(map(str, args.features))})
        child_ids = [runs.child(pt.name, {**tr.point_params(pt), **common, **{f"feature.{k}": v for k, v in data[pt.feature_set].cfg.to_dict().items()}}) for pt in points]
        results, model_uris = [], {}
        with _cli.Reporter("train", len(points), unit="grid points", every=1) as rep, parallel.engine(args.backend, args.scheduler):
            if n_jobs == 1:  # in-process: per-epoch progress
                stream = (tr.train_point(pt, data[pt.feature_set], split, seed=args.seed, threads=threads,
                                         on_epoch=lambda e, row, pt=pt: rep.advance(0, note=f"{pt.name} epoch {e}/{pt.epochs} loss {row['train_loss']:.3f} val_bacc {row['val_balanced_acc']:.3f}"))
                          for pt in points)
            else:
                stream = parallel.imap(run_point, points, n_jobs=n_jobs, data=data, split=split, seed=args.seed, threads=threads)
            for pt, run_id, res in zip(points, child_ids, stream):
                results.append(res)
                if res.error:
                    log.error("grid point %s failed:\n%s", pt.name, res.error)
                    runs.finish(run_id, ok=False, error=res.error)
                else:
                    model_uris[run_id] = log_point(runs, run_id, res, data[pt.feature_set], split)
                    runs.finish(run_id)
                rep.advance(1, errors=int(res.error is not None), note=f"{pt.name}: " + (f"val_bacc {res.final['val_balanced_acc']:.3f}" if not res.error else "FAILED"))
        winner = tr.best(results)
        table = summary(points, child_ids, results, winner)
        show_table(table)
        if winner is None:
            runs.finish(runs.parent_id, ok=False, error="every grid point failed")
            raise JobError("every grid point failed; see the errors above and the runs in the MLflow UI", _cli.FAILURE)
        win_id = child_ids[results.index(winner)]
        win_metrics = {k: winner.final[k] for k in ("val_balanced_acc", "val_loss", "val_acc")} | winner.test
        runs.log_summary(table, win_id, win_metrics)
        if args.no_register:
            log.info("winner %s (run %s); not registered (--no-register)", winner.point.name, win_id)
        else:
            version = tracking.register_champion(model_uris[win_id], win_id, win_metrics, data[winner.point.feature_set].cfg)
            _cli.console.print(f"registered {tracking.MODEL_NAME} version {version} as [bold]models:/{tracking.MODEL_NAME}@{tracking.ALIAS}[/] "
                               f"(test balanced acc {winner.test['test_balanced_acc']:.3f}, run {win_id})", highlight=False)
        runs.finish(runs.parent_id, ok=True)
    except store_errors as e:
        raise JobError(f"tracking store {uri} failed mid-run: {type(e).__name__}: {str(e).splitlines()[0][:300]} — rerun when it is back", _cli.FAILURE) from None
    return _cli.OK


def log_point(runs: tracking.GridRuns, run_id: str, res: tr.PointResult, data: tr.Data, split: dict) -> str:
    from voiceclf.model import GenderCNN

    model = GenderCNN(*data.cfg.shape[1:])
    model.load_state_dict(res.state_dict)
    artifacts = {
        "curves.png": tracking.curves_figure(res.history, res.point.name),
        "confusion_matrix.png": tracking.confusion_figure(res.confusion, f"test (held-out speakers), files\n{res.point.name}"),
        "split.json": split,
        "per_speaker.csv": res.per_speaker,
    }
    return runs.log_point(run_id, res.history, {**res.test, "train_seconds": res.seconds}, artifacts=artifacts, model=model, cfg=data.cfg, input_example=np.array(data.x[:2]))


def summary(points, run_ids, results, winner) -> pd.DataFrame:
    rows = []
    for pt, rid, res in zip(points, run_ids, results):
        f = res.final
        rows.append({"winner": "*" if res is winner else "", "point": pt.name, "run_id": rid, "status": "FAILED" if res.error else "ok",
                     "val_balanced_acc": f.get("val_balanced_acc"), "val_loss": f.get("val_loss"),
                     "test_balanced_acc": res.test.get("test_balanced_acc"), "seconds": round(res.seconds, 1)})
    return pd.DataFrame(rows)


def show_table(table: pd.DataFrame) -> None:
    if not _cli.interactive():
        log.info("grid search (winner marked *):\n%s", table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return
    from rich.table import Table

    t = Table(title="grid search (winner marked *)")
    for c in table.columns:
        t.add_column(c)
    for row in table.itertuples(index=False):
        t.add_row(*["" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in row])
    _cli.console.print(t)


def main(argv=None) -> None:
    _cli.main_wrapper("train", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    main()
