"""The grid search: read and check a grid file, load the shards, train every point (and its cross-corpus
refits), rank them, and hand the winner to the champion rule. What reaches MLflow is decided in ``run_log``."""
from __future__ import annotations

import logging
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from voiceclf import champion, parallel, run_log, shards
from voiceclf.progress import OnProgress, Progress, quiet

# torch and MLflow take seconds to import: train and tracking are imported where they are used.
if TYPE_CHECKING:
    from voiceclf import tracking
    from voiceclf import train as tr

log = logging.getLogger("voiceclf")


class GridError(ValueError):
    """A grid (file or values) that cannot be searched."""


class TrainError(RuntimeError):
    """Training gave nothing to register: every grid point failed."""


@dataclass
class TrainSummary:
    """What a :func:`train_grid` call did: the grid table (one row per point), the winner, its registration."""

    table: pd.DataFrame
    winner: tr.PointResult
    winner_run_id: str
    tracking_uri: str
    version: int | None = None  # None: not registered
    promoted: bool = False
    reason: str = ""


def read_grid(path: str | os.PathLike, overrides: dict[str, list] | None = None) -> dict[str, dict[str, list]]:
    """Family → {hyperparameter: values} from a TOML grid file (one table per family), ``overrides`` on top of every family."""
    from voiceclf import train as tr

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise GridError(f"grid file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise GridError(f"grid file {path}: {e}") from None
    unknown = set(raw) - set(tr.FAMILIES)
    if unknown:
        raise GridError(f"grid file {path}: unknown table(s) {sorted(unknown)}; expected [cnn] and/or [embedding_head]")
    grids = {}
    for family in tr.FAMILIES:
        values = {**raw.get(family, {}), **(overrides or {})}
        for key, v in values.items():
            if key not in tr.GRID_KEYS:
                raise GridError(f"grid file {path}: [{family}] {key} is not a hyperparameter; expected some of {sorted(tr.GRID_KEYS)}")
            if not isinstance(v, list):
                values[key] = [v]
            elif not v:
                raise GridError(f"grid: [{family}] {key} must be a non-empty list")
        grids[family] = values
    return grids


def feature_dirs(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """The shard folders: each given folder, or its sub-folders that hold shards (featurize of several sets)."""
    from voiceclf import train as tr

    out = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise tr.DataError(f"feature folder {d} does not exist (featurize first)")
        if shards.part_paths(d):
            out.append(d)
            continue
        subs = sorted(s for s in d.iterdir() if s.is_dir() and shards.part_paths(s))
        if not subs:
            raise tr.DataError(f"feature folder {d} holds no shards (featurize first)")
        out += subs
    return out


def load_data(dirs: Sequence[str | os.PathLike]) -> tuple[dict[str, tr.Data], dict[str, list[Path]]]:
    """One Data per feature set (directories of one set are concatenated), and the directories of each set."""
    from voiceclf import train as tr

    groups: dict = {}
    for d in feature_dirs(dirs):
        groups.setdefault(shards.dir_config(d), []).append(d.resolve())
    by_set, dirs_of = {}, {}
    for cfg, ds in groups.items():
        if cfg.feature_set in by_set:
            raise tr.DataError(f"{', '.join(map(str, ds))}: two different configs of feature set {cfg.feature_set}; pass folders of one config per set")
        rows, x, cfg = shards.read(ds)
        by_set[cfg.feature_set] = tr.Data.from_shards(rows, x, cfg)
        dirs_of[cfg.feature_set] = ds
    return by_set, dirs_of


def all_speakers(data: dict[str, tr.Data]) -> pd.DataFrame:
    """Every speaker of every feature set once: the split is the same for all families."""
    spk = pd.concat([d.speakers() for d in data.values()], ignore_index=True).drop_duplicates("speaker")
    return spk.sort_values("speaker", ignore_index=True)


def run_task(task: tuple, points: list[tr.GridPoint], data: dict, seed: int, threads: int, device: str, epochs=None) -> tr.PointResult:
    """One training of a grid point (in a worker): on the split, or on a cross-corpus validation split.
    ``epochs``: a queue for each epoch's end (``relay.epochs_reported``), or None."""
    from voiceclf import relay
    from voiceclf import train as tr

    i, left_out, split = task
    pt = points[i]
    on_epoch = (lambda e, row: relay.put_quietly(epochs, relay.epoch_note(pt.name, left_out, e, pt.epochs, row))) if epochs is not None else None
    return tr.train_point(pt, data[pt.feature_set], split, seed=seed, threads=threads, device=device, on_epoch=on_epoch)


@dataclass
class _Plan:
    """What a grid search trains: the data of each feature set, the speaker split (and one more per corpus left
    out), the points, and how many trainings run side by side."""

    data: dict[str, tr.Data]
    dirs_of: dict[str, list[Path]]
    split: dict
    xsplits: dict[str, dict]
    points: list[tr.GridPoint]
    corpora: list[str]
    device: str
    n_jobs: int
    threads: int
    common: dict  # params every run of the grid logs

    @property
    def tasks(self) -> list[tuple[int, str | None, dict]]:
        """Each point trains once on the split, and once per training corpus left out (the cross-corpus validation)."""
        return [(i, left_out, sub) for i in range(len(self.points)) for left_out, sub in [(None, self.split), *self.xsplits.items()]]


def _plan(features: Sequence[str | os.PathLike], grids: dict[str, dict[str, list]], *, holdout_corpus: str | None, seed: int,
          jobs: int, device: str, uri: str) -> _Plan:
    """Load the shards, split the speakers, expand the grid and size the parallelism; say it in one log line."""
    from voiceclf import train as tr

    data, dirs_of = load_data(features)
    if not all(d.speaker_level for d in data.values()):
        log.warning("NO SPEAKER IDS: splitting by file, so the same voice can sit in train and test and the scores will be optimistic")
    speakers = all_speakers(data)
    split = tr.split_speakers(speakers, seed=seed, holdout_corpus=holdout_corpus)
    xsplits = tr.cross_corpus_splits(split, speakers)
    points = [pt for fs in sorted(data) for pt in tr.grid(grids[data[fs].cfg.family], fs)]
    device = str(tr.pick_device(device))
    n_tasks = len(points) * (1 + len(xsplits))
    n_jobs = min(n_tasks, os.cpu_count() or 1) if jobs == -1 else min(jobs, n_tasks)
    if device != "cpu":
        n_jobs = 1  # one process owns the GPU; its batches are the parallelism
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    corpora = sorted(set(np.concatenate([d.corpus for d in data.values()])))
    sizes = {f"split_{s}_speakers": len(split[s]) for s in tr.SPLITS}
    common = {"seed": seed, "holdout_corpus": holdout_corpus or "", "corpora": ",".join(corpora), "device": device,
              "selection": "xval_score (leave each training corpus out in turn)" if xsplits else "val_score (one corpus: speaker split only)",
              "speaker_level_split": all(d.speaker_level for d in data.values()), **sizes}
    log.info("train: %d grid point(s) (%s) on %s; %d/%d/%d speakers (train/val/test)%s; %s; %d parallel; tracking %s",
             len(points), ", ".join(sorted(data)), ", ".join(corpora), len(split["train"]), len(split["val"]), len(split["test"]),
             f", test = corpus {holdout_corpus}" if holdout_corpus else "",
             f"points ranked by cross-corpus validation (each trains {len(xsplits)} more time(s), without {', '.join(xsplits)} in turn)" if xsplits
             else "points ranked by val_score (fewer than two training corpora: no cross-corpus validation)", n_jobs, uri)
    return _Plan(data, dirs_of, split, xsplits, points, corpora, device, n_jobs, threads, common)


class _PointRuns:
    """The grid points' child runs and results. A point's run opens when its first training starts (in a worker, it
    says when) and ends when its last one ended, so the UI's duration is the point's own training, not the grid's."""

    def __init__(self, runs: tracking.GridRuns, plan: _Plan, point_tags: dict) -> None:
        n = len(plan.points)
        self.runs, self.plan, self.point_tags = runs, plan, point_tags
        self.names = run_log.run_names(plan.points)
        self.ids: list[str | None] = [None] * n
        self.ended_s = [0.0] * n
        self.results: list[tr.PointResult | None] = [None] * n  # the training on the split
        self.xres: dict[int, dict[str, tr.PointResult]] = {i: {} for i in range(n)}  # per corpus left out
        self.model_uris: dict[str, str] = {}

    def open(self, i: int, start_s: float) -> str:
        if self.ids[i] is None:
            from voiceclf import train as tr

            pt, d = self.plan.points[i], self.plan.data[self.plan.points[i].feature_set]
            self.ids[i] = self.runs.child(self.names[i], {**tr.point_params(pt), **self.plan.common, "data_fingerprint": d.fingerprint(),
                                                          **{f"feature.{k}": v for k, v in d.cfg.to_dict().items()}},
                                          tags={**self.point_tags, "voiceclf.point": pt.name}, start_time_s=start_s)
        return self.ids[i]

    def add(self, i: int, left_out: str | None, res: tr.PointResult) -> str:
        """One training's result in; returns its progress note."""
        pt = self.plan.points[i]
        self.open(i, res.started_s)
        self.ended_s[i] = max(self.ended_s[i], res.started_s + res.seconds)
        if left_out is None:
            self.results[i] = res
        else:
            res.model = None
            self.xres[i][left_out] = res
        return f"{pt.name}{f' without {left_out}' if left_out else ''}: " + ("FAILED" if res.error else
                f"val_score {res.final['val_score']:.3f} (epoch {res.best_epoch})" + (f", on {left_out} {res.test['test_score']:.3f}" if left_out else ""))

    def finish_if_complete(self, i: int) -> None:
        """When all of point ``i``'s trainings are in: calibrate and log it, or fail its run if one of them failed."""
        if len(self.xres[i]) != len(self.plan.xsplits) or self.results[i] is None:
            return
        pt, main, rid = self.plan.points[i], self.results[i], self.ids[i]
        failed = main.error or next((r.error for r in self.xres[i].values() if r.error), None)
        if failed:
            main.error = main.error or f"a cross-corpus validation training failed:\n{failed}"
            log.error("grid point %s failed:\n%s", pt.name, main.error)
            self.runs.finish(rid, ok=False, error=main.error, end_time_s=self.ended_s[i])
            return
        champion.calibrate_point(main, self.xres[i])
        d = self.plan.data[pt.feature_set]
        self.model_uris[rid] = run_log.log_point(self.runs, rid, main, d, self.plan.split)
        self.runs.log_datasets(rid, pt.feature_set, sorted({str(p) for p in self.plan.dirs_of[pt.feature_set]}), d.fingerprint(),
                               run_log.dataset_profiles(d, self.plan.split), columns=shards.schema(d.cfg))
        self.runs.finish(rid, end_time_s=self.ended_s[i])


def _train_points(plan: _Plan, point_runs: _PointRuns, *, seed: int, backend: str, scheduler: str | None, per_point: bool,
                  on_progress: OnProgress) -> None:
    """Every training of every point, in this process (``n_jobs`` 1) or in workers, each result into ``point_runs``."""
    from voiceclf import relay

    tasks, runs = plan.tasks, point_runs.runs
    done = failed_n = 0
    on_progress(Progress("train", 0, len(tasks), unit="trainings"))
    # every epoch's end is a progress note, from the workers too (a CNN training takes minutes); Dask's are out of reach
    report = lambda note: on_progress(Progress("train", done, len(tasks), failed_n, "trainings", note))  # noqa: E731
    with parallel.engine(backend, scheduler), relay.epochs_reported(report, across_processes=plan.n_jobs > 1 and backend != "dask") as epochs:
        if plan.n_jobs == 1:  # in-process
            def in_process():
                for task in tasks:
                    point_runs.open(task[0], time.time())
                    if per_point:  # a point's trainings are consecutive, the one on the split first; finish() stops it
                        runs.watch(point_runs.ids[task[0]])
                    yield run_task(task, plan.points, plan.data, seed, plan.threads, plan.device, epochs)
            stream = in_process()
        else:
            stream = parallel.imap(run_task, tasks, n_jobs=plan.n_jobs, points=plan.points, data=plan.data, seed=seed, threads=plan.threads,
                                   device=plan.device, epochs=epochs if backend != "dask" else None)
        for (i, left_out, _), res in zip(tasks, stream):
            note = point_runs.add(i, left_out, res)
            done += 1
            failed_n += int(res.error is not None)
            on_progress(Progress("train", done, len(tasks), failed_n, "trainings", note))
            point_runs.finish_if_complete(i)


def _conclude(plan: _Plan, point_runs: _PointRuns, uri: str, *, holdout_corpus: str | None, register: bool, force_promote: bool,
              model_name: str) -> TrainSummary:
    """Rank the points, describe the grid on its parent run, register the winner (champion or not)."""
    from voiceclf import tracking
    from voiceclf import train as tr

    runs, results, names = point_runs.runs, point_runs.results, point_runs.names
    winner = tr.best(results)
    table = run_log.summary(plan.points, point_runs.ids, results, winner, plan.corpora)
    if winner is None:
        runs.finish(runs.parent_id, ok=False, error="every grid point failed")
        log.info("grid search:\n%s", table.to_string(index=False))
        raise TrainError("every grid point failed; see the errors above and the runs in the MLflow UI")
    win_id = point_runs.ids[results.index(winner)]
    out = TrainSummary(table, winner, win_id, uri)
    win_metrics = {**winner.val, **winner.xval, **winner.test, "best_epoch": winner.best_epoch}
    runs.log_summary(table, win_id, run_log.point_metrics(winner), {"winner": names[results.index(winner)]})
    runs.tag(win_id, {"winner": run_log.winner_reason(winner, results)})
    runs.describe(runs.parent_id, run_log.grid_markdown(table, plan.corpora, holdout_corpus, bool(plan.xsplits)))
    if register:
        out.promoted, out.reason = champion.decide_promotion(winner, plan.data, plan.split, force_promote, model_name)
        out.version = tracking.register_version(point_runs.model_uris[win_id], win_id, win_metrics, plan.data[winner.point.feature_set].cfg,
                                                promote=out.promoted, reason=out.reason, model_name=model_name,
                                                description=run_log.version_markdown(winner, plan.corpora, out.reason, bool(plan.xsplits)))
        runs.tag(runs.parent_id, {"voiceclf.promoted": str(out.promoted).lower(), "voiceclf.promotion": out.reason})
    runs.finish(runs.parent_id, ok=True)
    return out


def train_grid(
    features: Sequence[str | os.PathLike],
    grids: dict[str, dict[str, list]],
    *,
    holdout_corpus: str | None = None,
    experiment: str = "voiceclf",
    model_name: str = "voiceclf",
    run_label: str = "",
    tracking_uri: str | None = None,
    seed: int = 0,
    jobs: int = -1,
    device: str = "auto",
    backend: str = "loky",
    scheduler: str | None = None,
    system_metrics: bool = True,
    register: bool = True,
    force_promote: bool = False,
    on_progress: OnProgress = quiet,
) -> TrainSummary:
    """Grid search over the model families of the feature sets in ``features``; every point an MLflow run.

    The split is by speaker (stratified by corpus and sex; ``holdout_corpus`` tests on one corpus and
    trains on the others). With two or more training corpora every point is trained again without each
    of them in turn and scored on it; the mean (``xval_score``) ranks the points, else ``val_score`` does.
    The winner is registered (as ``model_name``) and becomes the champion only if it is at least as good as the
    current one on the same held-out speakers (or ``force_promote``). ``run_label`` starts the parent run's name
    (the demo's ``demo``); the rest of it is the date, the corpora and the number of points. Raises :class:`GridError`, ``config.DataError``,
    ``shards.ShardError``, ``tracking.TrackingError`` (the store is unreachable or fails mid-run) and
    :class:`TrainError` (every point failed).
    """
    from voiceclf import tracking

    uri = tracking.connect(tracking_uri)
    plan = _plan(features, grids, holdout_corpus=holdout_corpus, seed=seed, jobs=jobs, device=device, uri=uri)
    store_errors = tracking.store_errors()
    # System metrics are machine-wide (psutil, NVML), so they belong to the runs that had the machine
    # to themselves: the parent always (the whole grid); a grid point only when points train one at a
    # time (jobs 1, and always on a GPU), where the figures while it trains are its own. Points
    # training side by side would each show the same shared figures; they point to the parent.
    per_point = system_metrics and plan.n_jobs == 1
    point_tags = {"voiceclf.system_metrics": "this run" if per_point else "parent run (points trained in parallel share the machine)"} if system_metrics else {}
    runs = None
    try:
        runs = tracking.GridRuns.start(experiment, run_log.grid_run_name(plan.corpora, len(plan.points), run_label), {
            **plan.common, "grid_points": len(plan.points), "features": ",".join(map(str, features)),
            **{f"grid.{fam}.{k}": v for fam, g in grids.items() for k, v in g.items()}}, system_metrics=system_metrics)
        if system_metrics and plan.device != "cpu" and not runs.gpu_metrics:
            log.warning("system metrics: no GPU figures (install nvidia-ml-py for NVIDIA GPUs: pip install nvidia-ml-py); CPU and memory only")
        point_runs = _PointRuns(runs, plan, point_tags)
        _train_points(plan, point_runs, seed=seed, backend=backend, scheduler=scheduler, per_point=per_point, on_progress=on_progress)
        return _conclude(plan, point_runs, uri, holdout_corpus=holdout_corpus, register=register, force_promote=force_promote,
                         model_name=model_name)
    except store_errors as e:
        raise tracking.TrackingError(f"tracking store {uri} failed mid-run: {type(e).__name__}: {str(e).splitlines()[0][:300]} — rerun when it is back") from None
    finally:
        if runs is not None:  # failed or interrupted: the sampling threads stop with the job
            runs.stop_system_metrics()

