"""The grid search: read a grid file, run the grid (:func:`run_grid`: load, split, expand, train every point and its
cross-corpus refits, calibrate, rank; logs nothing to MLflow, so the benchmark runs the same grid), and
:func:`train_grid`, the same run with every point an MLflow run and the winner handed to the champion rule.
What reaches MLflow is decided in ``run_log``."""
from __future__ import annotations

import logging
import os
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Unpack

import numpy as np
import pandas as pd

from voiceclf import champion, parallel, run_log, shards, splits
from voiceclf.compute import Compute, ComputeArgs
from voiceclf.dataset import Data, all_speakers, load_data
from voiceclf.points import FAMILIES, GridError, GridPoint, check_grid, expand
from voiceclf.progress import OnProgress, Progress, quiet

# torch and MLflow take seconds to import: train and tracking are imported where they are used.
if TYPE_CHECKING:
    from voiceclf import tracking
    from voiceclf.train import PointResult

log = logging.getLogger("voiceclf")


class TrainError(RuntimeError):
    """Training gave nothing to register: every grid point failed."""


def read_grid(path: str | os.PathLike, overrides: dict[str, list] | None = None) -> dict[str, dict[str, list]]:
    """Family → {hyperparameter: values} from a TOML grid file (one table per family), ``overrides`` on top of every
    family, checked by :func:`voiceclf.points.check_grid`."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise GridError(f"grid file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise GridError(f"grid file {path}: {e}") from None
    check_grid(raw, where=f"grid file {path}")  # the file's own tables first, so an unknown one is named as such
    return check_grid({family: {**raw.get(family, {}), **(overrides or {})} for family in FAMILIES}, where=f"grid file {path}")


# ----------------------------------------------------------------------------- the grid run
@dataclass
class GridPlan:
    """What a grid search trains: the data of each feature set, the speaker split (and one more per corpus left out),
    the points, and how many trainings run side by side."""

    data: dict[str, Data]
    dirs_of: dict[str, list[Path]]  # the shard folders of each feature set (empty when the data came loaded)
    split: dict
    xsplits: dict[str, dict]
    points: list[GridPoint]
    corpora: list[str]
    holdout_corpus: str | None
    seed: int
    device: str
    n_jobs: int
    threads: int

    @property
    def tasks(self) -> list[tuple[int, str | None, dict]]:
        """Each point trains once on the split, and once per training corpus left out (the cross-corpus validation)."""
        return [(i, left_out, sub) for i in range(len(self.points)) for left_out, sub in [(None, self.split), *self.xsplits.items()]]


def plan_grid(features: Sequence[str | os.PathLike] | Mapping[str, Data], grids: dict[str, dict[str, list]], *, holdout_corpus: str | None = None,
              seed: int = 0, jobs: int = -1, device: str = "auto") -> GridPlan:
    """Load the shards (or take ``features`` already loaded, ``{feature_set: Data}``), split the speakers, expand the
    checked grid and size the parallelism; say it in one log line."""
    from voiceclf.model import pick_device  # torch

    grids = check_grid(grids)
    data, dirs_of = (dict(features), {}) if isinstance(features, Mapping) else load_data(features)
    if not all(d.speaker_level for d in data.values()):
        log.warning("NO SPEAKER IDS: splitting by file, so the same voice can sit in train and test and the scores will be optimistic")
    speakers = all_speakers(data)
    split = splits.split_speakers(speakers, seed=seed, holdout_corpus=holdout_corpus)
    xsplits = splits.cross_corpus_splits(split, speakers)
    points = [pt for fs in sorted(data) for pt in expand(grids.get(data[fs].cfg.family, {}), fs)]
    device = str(pick_device(device))
    n_tasks = len(points) * (1 + len(xsplits))
    n_jobs = min(n_tasks, os.cpu_count() or 1) if jobs == -1 else min(jobs, n_tasks)
    if device != "cpu":
        n_jobs = 1  # one process owns the GPU; its batches are the parallelism
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    corpora = sorted(set(np.concatenate([d.corpus for d in data.values()])))
    log.info("train: %d grid point(s) (%s) on %s; %d/%d/%d speakers (train/val/test)%s; %s; %d parallel",
             len(points), ", ".join(sorted(data)), ", ".join(corpora), len(split["train"]), len(split["val"]), len(split["test"]),
             f", test = corpus {holdout_corpus}" if holdout_corpus else "",
             f"points ranked by cross-corpus validation (each trains {len(xsplits)} more time(s), without {', '.join(xsplits)} in turn)" if xsplits
             else "points ranked by val_score (fewer than two training corpora: no cross-corpus validation)", n_jobs)
    return GridPlan(data, dirs_of, split, xsplits, points, corpora, holdout_corpus, seed, device, n_jobs, threads)


def run_task(task: tuple, points: list[GridPoint], data: dict, seed: int, threads: int, device: str, epochs=None) -> PointResult:
    """One training of a grid point (in a worker): on the split, or on a cross-corpus validation split, whose model
    stays in the worker (only its predictions rank the point). ``epochs``: a queue for each epoch's end
    (``relay.epochs_reported``), or None."""
    from voiceclf import relay
    from voiceclf.train import train_point

    i, left_out, split = task
    pt = points[i]
    on_epoch = (lambda e, row: relay.put_quietly(epochs, relay.epoch_note(pt.name, left_out, e, pt.epochs, row))) if epochs is not None else None
    res = train_point(pt, data[pt.feature_set], split, seed=seed, threads=threads, device=device, on_epoch=on_epoch)
    if left_out is not None:
        res.model = None
    return res


class GridWatcher:
    """What :func:`run_grid` says as it goes, to whoever keeps a record (:func:`train_grid`'s MLflow runs); no-ops here."""

    def planned(self, plan: GridPlan) -> None:
        """The grid is planned; nothing has trained yet."""

    def starting(self, i: int, start_s: float) -> None:
        """A training of point ``i`` starts in this process (``start_s``: time.time()); workers' start times come with their results."""

    def trained(self, i: int, left_out: str | None, res: PointResult) -> None:
        """One training of point ``i`` ended: on the split (``left_out`` None) or without corpus ``left_out``."""

    def point_done(self, i: int, res: PointResult) -> None:
        """Every training of point ``i`` is in: ``res`` is calibrated with its cross-corpus scores, or has ``error``."""


@dataclass
class GridOutcome:
    """What :func:`run_grid` trained: the plan, and one result per point (calibrated, with its cross-corpus scores)."""

    plan: GridPlan
    results: list[PointResult]

    @property
    def ranked(self) -> list[PointResult]:
        """The points that trained, best first (:func:`voiceclf.train.rank_key`; ties keep the grid's order)."""
        from voiceclf.train import rank_key

        return sorted((r for r in self.results if r.error is None and r.history), key=rank_key, reverse=True)

    @property
    def winner(self) -> PointResult | None:
        """The point the grid picks (:func:`voiceclf.train.best`), None when every point failed."""
        from voiceclf.train import best

        return best(self.results)


def _note(pt: GridPoint, left_out: str | None, res: PointResult) -> str:
    """One training's progress note."""
    return f"{pt.name}{f' without {left_out}' if left_out else ''}: " + ("FAILED" if res.error else
           f"val_score {res.best_epoch_metrics['val_score']:.3f} (epoch {res.best_epoch})" + (f", on {left_out} {res.test['test_score']:.3f}" if left_out else ""))


def _complete(main: PointResult, xres: dict[str, PointResult]) -> None:
    """All of a point's trainings are in: calibrate it and give it its cross-corpus scores, or mark it failed."""
    failed = main.error or next((r.error for r in xres.values() if r.error), None)
    if failed:
        main.error = main.error or f"a cross-corpus validation training failed:\n{failed}"
        log.error("grid point %s failed:\n%s", main.point.name, main.error)
    else:
        champion.calibrate_point(main, xres)


def run_grid(features: Sequence[str | os.PathLike] | Mapping[str, Data], grids: dict[str, dict[str, list]], *, holdout_corpus: str | None = None,
             seed: int = 0, on_progress: OnProgress = quiet, watcher: GridWatcher | None = None, **compute: Unpack[ComputeArgs]) -> GridOutcome:
    """Every point of the grid trained on a speaker split of ``features`` (shard folders, or ``{feature_set: Data}``),
    and once more without each training corpus in turn; each point calibrated and scored across corpora; ranked.

    The split is by speaker (stratified by corpus and sex; ``holdout_corpus`` tests on one corpus and trains on the
    others). With two or more training corpora the mean of the refits' scores on their left-out corpus
    (``xval_score``) ranks the points, else ``val_score`` does. Trainings run in this process (``jobs`` 1, and on a
    GPU) or in ``jobs`` workers of ``backend`` (:class:`voiceclf.compute.Compute`). Logs nothing to MLflow: ``watcher``
    is told as it goes. Raises :class:`GridError`, ``config.DataError``, ``config.DeviceError``, ``shards.ShardError``,
    ``parallel.EngineError``.
    """
    from voiceclf import relay

    c = Compute(**compute)
    plan = plan_grid(features, grids, holdout_corpus=holdout_corpus, seed=seed, jobs=c.jobs, device=c.device)
    watcher = watcher or GridWatcher()
    watcher.planned(plan)
    tasks = plan.tasks
    results: list[PointResult | None] = [None] * len(plan.points)  # the training on the split
    xres: dict[int, dict[str, PointResult]] = {i: {} for i in range(len(plan.points))}  # per corpus left out
    done = failed_n = 0
    on_progress(Progress("train", 0, len(tasks), unit="trainings"))
    # every epoch's end is a progress note, from the workers too (a CNN training takes minutes); Dask's are out of reach
    report = lambda note: on_progress(Progress("train", done, len(tasks), failed_n, "trainings", note))  # noqa: E731
    with parallel.engine(c.backend, c.scheduler), relay.epochs_reported(report, across_processes=plan.n_jobs > 1 and c.backend != "dask") as epochs:
        if plan.n_jobs == 1:  # in-process; a point's trainings are consecutive, the one on the split first
            def in_process():
                for task in tasks:
                    watcher.starting(task[0], time.time())
                    yield run_task(task, plan.points, plan.data, seed, plan.threads, plan.device, epochs)
            stream = in_process()
        else:
            stream = parallel.imap(run_task, tasks, n_jobs=plan.n_jobs, points=plan.points, data=plan.data, seed=seed, threads=plan.threads,
                                   device=plan.device, epochs=epochs if c.backend != "dask" else None)
        for res, (i, left_out, _) in zip(stream, tasks):  # the stream first: it ends, and its workers' pool with it, before zip does
            watcher.trained(i, left_out, res)
            if left_out is None:
                results[i] = res
            else:
                xres[i][left_out] = res
            done += 1
            failed_n += int(res.error is not None)
            on_progress(Progress("train", done, len(tasks), failed_n, "trainings", _note(plan.points[i], left_out, res)))
            if results[i] is not None and len(xres[i]) == len(plan.xsplits):
                _complete(results[i], xres[i])
                watcher.point_done(i, results[i])
    return GridOutcome(plan, results)


# ----------------------------------------------------------------------------- the grid in MLflow
@dataclass
class TrainSummary:
    """What a :func:`train_grid` call did: the grid table (one row per point), the winner, its registration."""

    table: pd.DataFrame
    winner: PointResult
    winner_run_id: str
    tracking_uri: str
    version: int | None = None  # None: not registered
    promoted: bool = False
    reason: str = ""


class _PointRuns(GridWatcher):
    """The grid's parent run and its points' child runs. A point's run opens when its first training starts (in a worker,
    it says when) and ends when its last one ended, so the UI's duration is the point's own training, not the grid's."""

    def __init__(self, experiment: str, run_label: str, params: dict, system_metrics: bool) -> None:
        self.experiment, self.run_label, self.params, self.system_metrics = experiment, run_label, params, system_metrics
        self.runs: tracking.GridRuns | None = None

    def planned(self, plan: GridPlan) -> None:
        from voiceclf import tracking

        n = len(plan.points)
        self.plan, self.names, self.ids, self.ended_s, self.model_uris = plan, run_log.run_names(plan.points), [None] * n, [0.0] * n, {}
        self._of_set: dict[str, dict] = {}  # what every point of a feature set logs about its data, worked out once
        sizes = {f"split_{s}_speakers": len(plan.split[s]) for s in ("train", "val", "test")}
        self.common = {"seed": plan.seed, "holdout_corpus": plan.holdout_corpus or "", "corpora": ",".join(plan.corpora), "device": plan.device,
                       "selection": "xval_score (leave each training corpus out in turn)" if plan.xsplits else "val_score (one corpus: speaker split only)",
                       "speaker_level_split": all(d.speaker_level for d in plan.data.values()), **sizes}  # params every run of the grid logs
        # System metrics are machine-wide (psutil, NVML), so they belong to the runs that had the machine to themselves: the parent
        # always (the whole grid); a grid point only when points train one at a time (jobs 1, and always on a GPU), where the
        # figures while it trains are its own. Points training side by side would each show the same shared figures.
        self.per_point = self.system_metrics and plan.n_jobs == 1
        self.point_tags = {"voiceclf.system_metrics": "this run" if self.per_point else "parent run (points trained in parallel share the machine)"} \
            if self.system_metrics else {}
        self.runs = tracking.GridRuns.start(self.experiment, run_log.grid_run_name(plan.corpora, n, self.run_label),
                                            {**self.common, "grid_points": n, **self.params}, system_metrics=self.system_metrics)
        if self.system_metrics and plan.device != "cpu" and not self.runs.gpu_metrics:
            log.warning("system metrics: no GPU figures (install nvidia-ml-py for NVIDIA GPUs: pip install nvidia-ml-py); CPU and memory only")

    def data_of(self, feature_set: str) -> dict:
        """A feature set's data as its points' runs log it: fingerprint, shard folders, split profiles, schema."""
        if feature_set not in self._of_set:
            d = self.plan.data[feature_set]
            self._of_set[feature_set] = {"fingerprint": d.fingerprint(), "sources": sorted({str(p) for p in self.plan.dirs_of[feature_set]}),
                                         "profiles": run_log.dataset_profiles(d, self.plan.split), "columns": shards.schema(d.cfg)}
        return self._of_set[feature_set]

    def open(self, i: int, start_s: float) -> str:
        if self.ids[i] is None:
            from voiceclf.points import point_params

            pt, d = self.plan.points[i], self.plan.data[self.plan.points[i].feature_set]
            self.ids[i] = self.runs.child(self.names[i], {**point_params(pt), **self.common, "data_fingerprint": self.data_of(pt.feature_set)["fingerprint"],
                                                          **{f"feature.{k}": v for k, v in d.cfg.to_dict().items()}},
                                          tags={**self.point_tags, "voiceclf.point": pt.name}, start_time_s=start_s)
        return self.ids[i]

    def starting(self, i: int, start_s: float) -> None:
        self.open(i, start_s)
        if self.per_point:  # finish() stops the watch
            self.runs.watch(self.ids[i])

    def trained(self, i: int, left_out: str | None, res: PointResult) -> None:
        self.open(i, res.started_s)
        self.ended_s[i] = max(self.ended_s[i], res.started_s + res.seconds)

    def point_done(self, i: int, res: PointResult) -> None:
        """Log the calibrated point, or fail its run."""
        pt, rid = self.plan.points[i], self.ids[i]
        if res.error:
            self.runs.finish(rid, ok=False, error=res.error, end_time_s=self.ended_s[i])
            return
        d = self.plan.data[pt.feature_set]
        self.model_uris[rid] = run_log.log_point(self.runs, rid, res, d, self.plan.split)
        of = self.data_of(pt.feature_set)
        self.runs.log_datasets(rid, pt.feature_set, of["sources"], of["fingerprint"], of["profiles"], columns=of["columns"])
        self.runs.finish(rid, end_time_s=self.ended_s[i])


def _conclude(out: GridOutcome, point_runs: _PointRuns, uri: str, *, register: bool, force_promote: bool, model_name: str) -> TrainSummary:
    """Describe the ranked grid on its parent run, register the winner (champion or not)."""
    from voiceclf import tracking

    plan, runs, results, names = out.plan, point_runs.runs, out.results, point_runs.names
    winner = out.winner
    table = run_log.summary(plan.points, point_runs.ids, results, winner, plan.corpora)
    if winner is None:
        runs.finish(runs.parent_id, ok=False, error="every grid point failed")
        log.info("grid search:\n%s", table.to_string(index=False))
        raise TrainError("every grid point failed; see the errors above and the runs in the MLflow UI")
    win_id = point_runs.ids[results.index(winner)]
    summary = TrainSummary(table, winner, win_id, uri)
    win_metrics = {**winner.val, **winner.xval, **winner.test, "best_epoch": winner.best_epoch}
    runs.log_summary(table, win_id, run_log.point_metrics(winner), {"winner": names[results.index(winner)]})
    runs.tag(win_id, {"winner": run_log.winner_reason(winner, results)})
    runs.describe(runs.parent_id, run_log.grid_markdown(table, plan.corpora, plan.holdout_corpus, bool(plan.xsplits)))
    if register:
        summary.promoted, summary.reason = champion.decide_promotion(winner, plan.data, plan.split, force_promote, model_name)
        summary.version = tracking.register_version(point_runs.model_uris[win_id], win_id, win_metrics, plan.data[winner.point.feature_set].cfg,
                                                    promote=summary.promoted, reason=summary.reason, model_name=model_name,
                                                    description=run_log.version_markdown(winner, plan.corpora, summary.reason, bool(plan.xsplits)))
        runs.tag(runs.parent_id, {"voiceclf.promoted": str(summary.promoted).lower(), "voiceclf.promotion": summary.reason})
    runs.finish(runs.parent_id, ok=True)
    return summary


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
    system_metrics: bool = True,
    register: bool = True,
    force_promote: bool = False,
    on_progress: OnProgress = quiet,
    **compute: Unpack[ComputeArgs],
) -> TrainSummary:
    """Grid search over the model families of the feature sets in ``features`` (:func:`run_grid`); every point an
    MLflow run under one parent run.

    The winner is registered (as ``model_name``) and becomes the champion only if it is at least as good as the
    current one on the same held-out speakers (or ``force_promote``). ``run_label`` starts the parent run's name
    (the demo's ``demo``); the rest of it is the date, the corpora and the number of points. Raises :class:`GridError`,
    ``config.DataError``, ``config.DeviceError``, ``shards.ShardError``, ``tracking.TrackingError`` (the store is
    unreachable or fails mid-run) and :class:`TrainError` (every point failed). ``jobs``, ``backend``, ``scheduler``,
    ``device``: where the points train (:class:`voiceclf.compute.Compute`).
    """
    from voiceclf import tracking

    Compute(**compute)  # checked before the store is opened
    grids = check_grid(grids)
    uri = tracking.connect(tracking_uri)
    log.info("train: tracking %s", uri)
    store_errors = tracking.store_errors()
    point_runs = _PointRuns(experiment, run_label, {"features": ",".join(map(str, features)),
                                                    **{f"grid.{fam}.{k}": v for fam, g in grids.items() for k, v in g.items()}}, system_metrics)
    try:
        out = run_grid(features, grids, holdout_corpus=holdout_corpus, seed=seed, on_progress=on_progress, watcher=point_runs, **compute)
        return _conclude(out, point_runs, uri, register=register, force_promote=force_promote, model_name=model_name)
    except store_errors as e:
        raise tracking.TrackingError(f"tracking store {uri} failed mid-run: {type(e).__name__}: {str(e).splitlines()[0][:300]} — rerun when it is back") from None
    finally:
        if point_runs.runs is not None:  # failed or interrupted: the sampling threads stop with the job
            point_runs.runs.stop_system_metrics()
