"""train: grid search over the model families, every point an MLflow run, the best registered as champion.

    python -m jobs.train --features DIR [DIR ...] [--grid FILE] [--holdout-corpus NAME] [--lr 1e-3,3e-4] ...
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from jobs import _cli
from jobs._cli import JobError, log
from voiceclf import batch, parallel, shards, tracking
from voiceclf import train as tr
from voiceclf.config import LABELS, ConfigError
from voiceclf.score import p_male

DEFAULT_GRID = Path(__file__).with_name("grid.toml")
CLI_GRID_KEYS = ("lr", "epochs", "gamma", "batch_size", "hidden")


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
        description="Grid search over the model families on feature shards: the model card's CNN on MFC images "
        "(mfcc_pitch, mfcc_deltas) and a small head on pretrained speaker embeddings (speaker_embedding). "
        "Splits by speaker into train/val/test (stratified by corpus and sex), logs every grid point as a nested "
        "MLflow run (params, per-epoch curves, per-corpus metrics, model, plots) and keeps each point's best epoch by "
        "val_score (speaker-balanced validation accuracy, mean over corpora). With two or more training corpora each "
        "point is also trained without each corpus in turn and scored on it (xval_score): the point that does best on "
        "corpora it never saw is registered. "
        "The new version becomes models:/voiceclf@champion only if it is at least as good as the current champion "
        "on the same held-out speakers.",
        epilog="Tracking store: MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlruns/mlflow.db. "
        "Exit codes: 0 ok (also when the winner was not promoted), 1 failure (every grid point failed, tracking store "
        "unreachable), 2 bad arguments or data.",
    )
    p.add_argument("--features", nargs="+", required=True, type=Path, metavar="DIR",
                   help="featurize output folder(s), or a folder whose sub-folders are (as `make features` writes); "
                   "each feature set trains its family")
    p.add_argument("--grid", type=Path, default=DEFAULT_GRID, help="TOML grid file, one table per family (default %(default)s); CLI lists below override its keys for every family")
    p.add_argument("--lr", type=_list(float), help="learning rates, e.g. 1e-3,3e-4")
    p.add_argument("--epochs", type=_list(int), help="epoch counts, e.g. 10,20 (the best epoch by val_score is kept)")
    p.add_argument("--gamma", type=_list(float), help="StepLR decay factors, e.g. 0.5,0.7")
    p.add_argument("--batch-size", type=_list(int), help="batch sizes, e.g. 64")
    p.add_argument("--hidden", type=_list(int), help="embedding head hidden widths (0 = logistic regression), e.g. 0,64")
    p.add_argument("--no-feature-noise", action="store_true", help="turn off train-time perturbation in feature space")
    p.add_argument("--holdout-corpus", metavar="NAME", help="test on this corpus only and train/validate on the others (leave-one-corpus-out)")
    p.add_argument("--experiment", default=tracking.EXPERIMENT, help="MLflow experiment (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split and training (default %(default)s)")
    p.add_argument("--jobs", type=int, default=-1, help="trainings in parallel (-1 = all cores; default %(default)s; 1 on a GPU)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train: auto = CUDA when torch sees a GPU, else the CPU (default %(default)s)")
    p.add_argument("--backend", choices=parallel.BACKENDS, default="loky", help="joblib backend (default %(default)s)")
    p.add_argument("--scheduler", help="Dask scheduler address for --backend dask")
    p.add_argument("--no-system-metrics", action="store_true",
                   help="do not log CPU, memory and GPU use (MLflow system metrics, every 2 s) to the runs")
    p.add_argument("--no-register", action="store_true", help="do not register the winner in the Model Registry")
    p.add_argument("--force-promote", action="store_true", help="make the winner the champion even if the current champion does better on the held-out speakers")
    p.add_argument("--tracking-uri", help="override MLFLOW_TRACKING_URI for this run")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.jobs == 0:
        p.error("--jobs must be -1 (all cores) or >= 1")
    return args


def load_grid(args) -> dict[str, dict]:
    """Family → {key: list of values}, from the grid file with the CLI lists on top."""
    try:
        raw = tomllib.loads(args.grid.read_text())
    except FileNotFoundError:
        raise JobError(f"grid file {args.grid} does not exist", _cli.USAGE) from None
    except tomllib.TOMLDecodeError as e:
        raise JobError(f"grid file {args.grid}: {e}", _cli.USAGE) from None
    unknown = set(raw) - set(tr.FAMILIES)
    if unknown:
        raise JobError(f"grid file {args.grid}: unknown table(s) {sorted(unknown)}; expected [cnn] and/or [embedding_head]", _cli.USAGE)
    grids = {}
    for family in tr.FAMILIES:
        values = dict(raw.get(family, {}))
        for key in CLI_GRID_KEYS:
            if getattr(args, key):
                values[key] = getattr(args, key)
        if args.no_feature_noise:
            values["feature_noise"] = [False]
        for key, v in values.items():
            if key not in tr.GRID_KEYS:
                raise JobError(f"grid file {args.grid}: [{family}] {key} is not a hyperparameter; expected some of {sorted(tr.GRID_KEYS)}", _cli.USAGE)
            if not isinstance(v, list):
                values[key] = [v]
            elif not v:
                raise JobError(f"grid: [{family}] {key} must be a non-empty list", _cli.USAGE)
        grids[family] = values
    return grids


def feature_dirs(dirs: list[Path]) -> list[Path]:
    """The shard folders: each given folder, or its sub-folders that hold shards."""
    out = []
    for d in dirs:
        if not d.is_dir():
            raise JobError(f"feature folder {d} does not exist (run `make features` first)", _cli.USAGE)
        if shards.part_paths(d):
            out.append(d)
            continue
        subs = sorted(s for s in d.iterdir() if s.is_dir() and shards.part_paths(s))
        if not subs:
            raise JobError(f"feature folder {d} holds no shards (run `make features` first)", _cli.USAGE)
        out += subs
    return out


def load_data(dirs: list[Path]) -> tuple[dict[str, tr.Data], dict[str, list[Path]]]:
    """One Data per feature set (directories of one set are concatenated), and the directories of each set."""
    groups: dict = {}
    try:
        for d in feature_dirs(dirs):
            groups.setdefault(shards.dir_config(d), []).append(d.resolve())
        by_set, dirs_of = {}, {}
        for cfg, ds in groups.items():
            if cfg.feature_set in by_set:
                raise JobError(f"{', '.join(map(str, ds))}: two different configs of feature set {cfg.feature_set}; pass folders of one config per set", _cli.USAGE)
            rows, x, cfg = shards.read(ds)
            by_set[cfg.feature_set] = tr.Data.from_shards(rows, x, cfg)
            dirs_of[cfg.feature_set] = ds
        return by_set, dirs_of
    except (shards.ShardError, ConfigError, tr.DataError) as e:
        raise JobError(str(e), _cli.USAGE) from None


def dataset_profiles(data: tr.Data, split: dict) -> dict[str, dict[str, int]]:
    """Per split (as MLflow dataset contexts): speakers and recordings per corpus and sex."""
    out = {}
    for s, ctx in (("train", "training"), ("val", "validation"), ("test", "test")):
        part = tr.parts_of(data, split)[s]
        files = pd.DataFrame({"file": part.file, "speaker": part.speaker, "corpus": part.corpus, "sex": [LABELS[v] for v in part.y]})
        files = files[part.variant == 0].drop_duplicates("file")
        tags = {"windows": int(len(part.y)), "speakers_digest": hashlib.sha256("\n".join(split[s]).encode()).hexdigest()[:16]}
        for (c, sex), g in files.groupby(["corpus", "sex"]):
            tags[f"{c}.{sex}.speakers"] = int(g["speaker"].nunique())
            tags[f"{c}.{sex}.recordings"] = int(len(g))
        out[ctx] = tags
    return out


def all_speakers(data: dict[str, tr.Data]) -> pd.DataFrame:
    """Every speaker of every feature set once: the split is the same for all families."""
    spk = pd.concat([d.speakers() for d in data.values()], ignore_index=True).drop_duplicates("speaker")
    return spk.sort_values("speaker", ignore_index=True)


def run_task(task: tuple, points: list[tr.GridPoint], data: dict, seed: int, threads: int, device: str) -> tr.PointResult:
    """One training of a grid point (in a worker): on the split, or on a cross-corpus validation split."""
    i, _corpus, split = task
    return tr.train_point(points[i], data[points[i].feature_set], split, seed=seed, threads=threads, device=device)


def champion_test_score(current: tracking.LoadedModel, data: dict[str, tr.Data], split: dict) -> float:
    """The current champion's test_score on this run's held-out speakers.

    Its own feature config decides its input: the windows of a matching feature set when this
    run has them, else the held-out files featurized again with its config.
    """
    held_out = {s: tr.parts_of(d, split)["test"] for s, d in data.items()}
    match = [s for s, d in data.items() if d.cfg == current.cfg]
    if match:
        te = held_out[match[0]]
        return tr.evaluate(tr.file_level(p_male(current.module, te.x), te), "test")["test_score"]
    te = next(iter(held_out.values()))
    files = pd.DataFrame({"file": te.file, "speaker": te.speaker, "corpus": te.corpus, "y": te.y}).drop_duplicates("file")
    items = [batch.Item(path=os.path.basename(f), source=os.path.dirname(f), corpus=c, speaker=s, label=LABELS[y])
             for f, s, c, y in files[["file", "speaker", "corpus", "y"]].itertuples(index=False)]
    results = [r for r in batch.featurize_batch(items, current.cfg) if r.n_windows]
    if not results:
        raise tracking.TrackingError("none of the held-out files gave windows with the champion's feature config")
    x = np.concatenate([r.windows.features for r in results])
    rep = lambda v: np.repeat(np.asarray(v, dtype=object), [r.n_windows for r in results])  # noqa: E731
    rows = pd.DataFrame({"source": rep([r.item.source for r in results]), "path": rep([r.item.path for r in results]),
                         "corpus": rep([r.item.corpus for r in results]), "speaker": rep([r.item.speaker for r in results]),
                         "label": rep([r.item.label for r in results]), "augment": 0})
    te = tr.Data.from_shards(rows, x, current.cfg)
    return tr.evaluate(tr.file_level(p_male(current.module, te.x), te), "test")["test_score"]


def decide_promotion(winner: tr.PointResult, data: dict, split: dict, force: bool) -> tuple[bool, str]:
    """Promote only a winner at least as good as the current champion on the same held-out speakers."""
    new = winner.test["test_score"]
    try:
        current = tracking.load()
    except tracking.NoChampion:
        return True, "first champion"
    except tracking.TrackingError as e:
        return True, f"the current champion cannot be loaded ({e}); replaced"
    try:
        old = champion_test_score(current, data, split)
    except Exception as e:  # the old model may expect another input; it cannot then be compared, and must not block training
        return True, f"the current champion (version {current.version}) could not be evaluated on these speakers ({type(e).__name__}: {e}); replaced"
    verdict = f"test_score {new:.4f} vs the current champion (version {current.version}) {old:.4f} on the same held-out speakers"
    if new >= old - 1e-9:
        return True, verdict
    if force:
        return True, verdict + "; promoted anyway (--force-promote)"
    return False, verdict + "; not promoted (--force-promote overrides)"


def run(args: argparse.Namespace) -> int:
    _cli.setup_logging(args.verbose)
    grids = load_grid(args)
    try:
        uri = tracking.connect(args.tracking_uri)
    except tracking.TrackingError as e:
        raise JobError(str(e), _cli.FAILURE) from None
    data, dirs_of = load_data(args.features)
    first = next(iter(data.values()))
    if not all(d.speaker_level for d in data.values()):
        log.warning("NO SPEAKER IDS: splitting by file, so the same voice can sit in train and test and the scores will be optimistic")
    try:
        speakers = all_speakers(data)
        split = tr.split_speakers(speakers, seed=args.seed, holdout_corpus=args.holdout_corpus)
        xsplits = tr.cross_corpus_splits(split, speakers)
        points = [pt for fs in sorted(data) for pt in tr.grid(grids[data[fs].cfg.family], fs)]
    except tr.DataError as e:
        raise JobError(str(e), _cli.USAGE) from None
    try:
        device = str(tr.pick_device(args.device))
    except tr.DataError as e:
        raise JobError(str(e), _cli.USAGE) from None
    n_tasks = len(points) * (1 + len(xsplits))
    n_jobs = min(n_tasks, os.cpu_count() or 1) if args.jobs == -1 else min(args.jobs, n_tasks)
    if device != "cpu":
        n_jobs = 1  # one process owns the GPU; its batches are the parallelism
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    corpora = sorted(set(np.concatenate([d.corpus for d in data.values()])))
    sizes = {f"split_{s}_speakers": len(split[s]) for s in tr.SPLITS}
    common = {"seed": args.seed, "holdout_corpus": args.holdout_corpus or "", "corpora": ",".join(corpora), "device": device,
              "selection": "xval_score (leave each training corpus out in turn)" if xsplits else "val_score (one corpus: speaker split only)",
              "speaker_level_split": all(d.speaker_level for d in data.values()), **sizes}
    log.info("train: %d grid point(s) (%s) on %s; %d/%d/%d speakers (train/val/test)%s; %s; %d parallel; tracking %s",
             len(points), ", ".join(sorted(data)), ", ".join(corpora), len(split["train"]), len(split["val"]), len(split["test"]),
             f", test = corpus {args.holdout_corpus}" if args.holdout_corpus else "",
             f"points ranked by cross-corpus validation (each trains {len(xsplits)} more time(s), without {', '.join(xsplits)} in turn)" if xsplits
             else "points ranked by val_score (fewer than two training corpora: no cross-corpus validation)", n_jobs, uri)

    store_errors = tracking.store_errors()
    # System metrics are machine-wide (psutil, NVML), so they belong to the runs that had the machine
    # to themselves: the parent always (the whole grid); a grid point only when points train one at a
    # time (--jobs 1, and always on a GPU), where the figures while it trains are its own. Points
    # training side by side would each show the same shared figures; they point to the parent.
    system_metrics = not args.no_system_metrics
    per_point = system_metrics and n_jobs == 1
    point_tags = {"voiceclf.system_metrics": "this run" if per_point else "parent run (points trained in parallel share the machine)"} if system_metrics else {}
    runs = None
    try:
        runs = tracking.GridRuns.start(args.experiment, f"grid-{len(points)}pts", {
            **common, "grid_points": len(points), "features": ",".join(map(str, args.features)),
            **{f"grid.{fam}.{k}": v for fam, g in grids.items() for k, v in g.items()}}, system_metrics=system_metrics)
        if system_metrics and device != "cpu" and not runs.gpu_metrics:
            log.warning("system metrics: no GPU figures (install nvidia-ml-py for NVIDIA GPUs: pip install nvidia-ml-py); CPU and memory only")
        child_ids = [runs.child(pt.name, {**tr.point_params(pt), **common, "data_fingerprint": data[pt.feature_set].fingerprint(),
                                          **{f"feature.{k}": v for k, v in data[pt.feature_set].cfg.to_dict().items()}}, tags=point_tags) for pt in points]
        # each point trains once on the split, and once per training corpus left out (the cross-corpus validation)
        tasks = [(i, corpus, sub) for i in range(len(points)) for corpus, sub in [(None, split), *xsplits.items()]]
        results: list[tr.PointResult | None] = [None] * len(points)
        xres: dict[int, dict[str, tr.PointResult]] = {i: {} for i in range(len(points))}
        model_uris = {}
        with _cli.Reporter("train", len(tasks), unit="trainings", every=1) as rep, parallel.engine(args.backend, args.scheduler):
            if n_jobs == 1:  # in-process: per-epoch progress
                def in_process():
                    for i, c, sub in tasks:
                        if per_point:  # a point's trainings are consecutive, the one on the split first; finish() stops it
                            runs.watch(child_ids[i])
                        yield tr.train_point(points[i], data[points[i].feature_set], sub, seed=args.seed, threads=threads, device=device,
                                             on_epoch=lambda e, row, pt=points[i], c=c: rep.advance(0, note=f"{pt.name}{f' without {c}' if c else ''} epoch {e}/{pt.epochs} loss {row['train_loss']:.3f} val_score {row['val_score']:.3f}"))
                stream = in_process()
            else:
                stream = parallel.imap(run_task, tasks, n_jobs=n_jobs, points=points, data=data, seed=args.seed, threads=threads, device=device)
            for (i, corpus, _), res in zip(tasks, stream):
                pt = points[i]
                if corpus is None:
                    results[i] = res
                else:
                    res.model = None
                    xres[i][corpus] = res
                note = f"{pt.name}{f' without {corpus}' if corpus else ''}: " + ("FAILED" if res.error else
                        f"val_score {res.final['val_score']:.3f} (epoch {res.best_epoch})" + (f", on {corpus} {res.test['test_score']:.3f}" if corpus else ""))
                rep.advance(1, errors=int(res.error is not None), note=note)
                if len(xres[i]) == len(xsplits) and results[i] is not None:  # all of this point's trainings are in
                    main = results[i]
                    failed = main.error or next((r.error for r in xres[i].values() if r.error), None)
                    if failed:
                        main.error = main.error or f"a cross-corpus validation training failed:\n{failed}"
                        log.error("grid point %s failed:\n%s", pt.name, main.error)
                        runs.finish(child_ids[i], ok=False, error=main.error)
                    else:
                        main.xval = tr.cross_corpus_score(xres[i])
                        model_uris[child_ids[i]] = log_point(runs, child_ids[i], main, data[pt.feature_set], split)
                        d = data[pt.feature_set]
                        runs.log_datasets(child_ids[i], pt.feature_set, sorted({str(p) for p in dirs_of[pt.feature_set]}), d.fingerprint(), dataset_profiles(d, split))
                        runs.finish(child_ids[i])
        winner = tr.best(results)
        table = summary(points, child_ids, results, winner, corpora)
        show_table(table)
        if winner is None:
            runs.finish(runs.parent_id, ok=False, error="every grid point failed")
            raise JobError("every grid point failed; see the errors above and the runs in the MLflow UI", _cli.FAILURE)
        win_id = child_ids[results.index(winner)]
        win_metrics = {**winner.val, **winner.xval, **winner.test, "best_epoch": winner.best_epoch}
        runs.log_summary(table, win_id, win_metrics)
        runs.describe(runs.parent_id, grid_markdown(table, corpora, args.holdout_corpus, bool(xsplits)))
        if args.no_register:
            log.info("winner %s (run %s); not registered (--no-register)", winner.point.name, win_id)
        else:
            promote, reason = decide_promotion(winner, data, split, args.force_promote)
            version = tracking.register_version(model_uris[win_id], win_id, win_metrics, data[winner.point.feature_set].cfg, promote=promote, reason=reason,
                                                description=version_markdown(winner, corpora, reason, bool(xsplits)))
            runs.tag(runs.parent_id, {"voiceclf.promoted": str(promote).lower(), "voiceclf.promotion": reason})
            if promote:
                _cli.console.print(f"registered {tracking.MODEL_NAME} version {version} as [bold]models:/{tracking.MODEL_NAME}@{tracking.ALIAS}[/] "
                                   f"({winner.point.name}: test_score {winner.test['test_score']:.3f}, run {win_id}; {reason})", highlight=False)
            else:
                log.warning("registered %s version %d WITHOUT the %s alias: %s", tracking.MODEL_NAME, version, tracking.ALIAS, reason)
        runs.finish(runs.parent_id, ok=True)
    except store_errors as e:
        raise JobError(f"tracking store {uri} failed mid-run: {type(e).__name__}: {str(e).splitlines()[0][:300]} — rerun when it is back", _cli.FAILURE) from None
    finally:
        if runs is not None:  # failed or interrupted: the sampling threads stop with the job
            runs.stop_system_metrics()
    return _cli.OK


def log_point(runs: tracking.GridRuns, run_id: str, res: tr.PointResult, data: tr.Data, split: dict) -> str:
    artifacts = {
        "curves.png": tracking.curves_figure(res.history, res.point.name, res.best_epoch),
        "confusion_matrix.png": tracking.confusion_figure(res.confusion, f"test (held-out speakers), files\n{res.point.name}"),
        "split.json": split,
        "per_speaker.csv": res.per_speaker,
    }
    # the per-epoch val_* curves end at the last epoch; best_val_* are the kept epoch's, the figures the grid compares
    final = {**res.test, **res.xval, **{f"best_{k}": v for k, v in res.val.items()}, "best_epoch": res.best_epoch, "train_seconds": res.seconds}
    return runs.log_point(run_id, res.history, final, artifacts=artifacts, model=res.model, cfg=data.cfg, input_example=np.array(data.x[:2]))


def summary(points, run_ids, results, winner, corpora) -> pd.DataFrame:
    rows = []
    for pt, rid, res in zip(points, run_ids, results):
        f = res.final
        row = {"winner": "*" if res is winner else "", "point": pt.name, "run_id": rid, "status": "FAILED" if res.error else "ok",
               "epoch": res.best_epoch or None, "xval_score": res.xval.get("xval_score"), "val_score": f.get("val_score"),
               "test_score": res.test.get("test_score")}
        row.update({f"test.{c}": res.test.get(f"test_speaker_bacc.{c}") for c in corpora})
        row["seconds"] = round(res.seconds, 1)
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.4f}" if isinstance(v, float) else str(v))


def grid_markdown(table: pd.DataFrame, corpora: list[str], holdout: str | None, xval: bool) -> str:
    """The parent run's description: the grid as a Markdown table, winner marked."""
    cols = [c for c in table.columns if c != "run_id"]
    lines = [f"Grid over {', '.join(sorted({p.split()[0] for p in table['point']}))} on {', '.join(corpora)}"
             + (f"; test = held-out corpus **{holdout}**" if holdout else "") + ". Points ranked by "
             + ("`xval_score` (each training corpus left out in turn)." if xval else "`val_score` (one training corpus)."), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table[cols].itertuples(index=False):
        lines.append("| " + " | ".join(("**★**" if v == "*" else _fmt(v)) for v in row) + " |")
    return "\n".join(lines)


def version_markdown(winner: tr.PointResult, corpora: list[str], reason: str, xval: bool) -> str:
    """The model version's description: what it is, how it was chosen, its held-out figures per corpus."""
    t = winner.test
    per = ", ".join(f"{c} {t[f'test_speaker_bacc.{c}']:.3f}" for c in corpora if f"test_speaker_bacc.{c}" in t)
    return (f"**{winner.point.family}** on `{winner.point.feature_set}` ({winner.point.name}, epoch {winner.best_epoch}). "
            f"Chosen by {'`xval_score` ' + format(winner.xval.get('xval_score', float('nan')), '.3f') + ' (corpora left out in turn)' if xval else '`val_score` ' + format(winner.final['val_score'], '.3f')}. "
            f"Held-out speakers: test_score {t['test_score']:.3f} (speaker-balanced; per corpus: {per}); file balanced accuracy {t['test_balanced_acc']:.3f}. "
            f"Promotion: {reason}.")


def show_table(table: pd.DataFrame) -> None:
    if not _cli.interactive():
        log.info("grid search (winner marked *):\n%s", table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return
    from rich.table import Table

    t = Table(title="grid search (winner marked *; scores are speaker-balanced accuracy, mean over corpora)")
    for c in table.columns:
        t.add_column(c)
    for row in table.itertuples(index=False):
        t.add_row(*["" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in row])
    _cli.console.print(t)


def main(argv=None) -> None:
    _cli.main_wrapper("train", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    main()
