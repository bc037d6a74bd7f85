"""A grid's runs in MLflow: one parent per train call, a nested child per point, and what they log.

Logging goes through ``MlflowClient`` with explicit run ids, so the parent of a grid search can log its
children in any order and mark a crashed one FAILED (the one exception is the model: see ``logged_model``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from voiceclf.config import FeatureConfig
from voiceclf.tracking.datasets import dataset_inputs
from voiceclf.tracking.logged_model import log_model
from voiceclf.tracking.store import experiment_id, run_context_tags
from voiceclf.tracking.system_metrics import SystemMetrics


def _ms(seconds: float | None) -> int | None:
    """Wall-clock seconds (``time.time()``) as MLflow's epoch milliseconds."""
    return None if seconds is None else int(round(seconds * 1000))


def _flat(d: dict, prefix: str = "") -> dict[str, str]:
    return {f"{prefix}{k}": str(v) for k, v in d.items()}


@dataclass
class GridRuns:
    """One parent run per train call and a nested child per grid point.

    With ``system_metrics``, the parent logs MLflow system metrics from start to finish, and so does
    every run passed to :meth:`watch`. The sampling threads live in this process only: worker
    processes never write to the store.
    """

    experiment_id: str
    parent_id: str
    system_metrics: bool = False
    context: dict = field(default_factory=dict, repr=False)  # run_context_tags(), on every run
    _monitors: dict = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, experiment: str, run_name: str, params: dict, tags: dict | None = None, system_metrics: bool = False) -> "GridRuns":
        exp = experiment_id(experiment)
        client = MlflowClient()
        context = run_context_tags()
        run = client.create_run(exp, run_name=run_name, tags={**context, "voiceclf.role": "grid", **(tags or {})})
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in _flat(params).items()])
        runs = cls(exp, run.info.run_id, system_metrics, context)
        runs.watch(runs.parent_id)
        return runs

    def watch(self, run_id: str) -> None:
        """Log system metrics to ``run_id`` from now until :meth:`finish` (nothing when system metrics are off)."""
        if self.system_metrics and run_id not in self._monitors:
            monitor = SystemMetrics(run_id)
            monitor.start()
            self._monitors[run_id] = monitor

    @property
    def gpu_metrics(self) -> bool:
        """Whether the system metrics include the GPU (they need nvidia-ml-py for an NVIDIA GPU)."""
        return any(m.gpu for m in self._monitors.values())

    def stop_system_metrics(self, run_id: str | None = None) -> None:
        """Stop sampling for ``run_id`` (default: every run), logging the last interval."""
        monitors = [self._monitors.pop(rid) for rid in ([run_id] if run_id else list(self._monitors)) if rid in self._monitors]
        for monitor in monitors:  # all at once: their last writes overlap, and so do their timeouts
            monitor.stop()
        deadline = time.monotonic() + 10.0
        for monitor in monitors:
            monitor.finish(max(0.0, deadline - time.monotonic()))

    def child(self, name: str, params: dict, tags: dict | None = None, start_time_s: float | None = None) -> str:
        """A nested run for one grid point, started at ``start_time_s`` (wall clock; default now): when its
        training began, which may be in a worker process some time before the parent hears of it."""
        client = MlflowClient()
        run = client.create_run(self.experiment_id, run_name=name, start_time=_ms(start_time_s),
                                tags={**self.context, "mlflow.parentRunId": self.parent_id, "voiceclf.role": "grid_point", **(tags or {})})
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in _flat(params).items()])
        return run.info.run_id

    def log_point(self, run_id: str, history: list[dict], final: dict, *, artifacts: dict, model=None, cfg: FeatureConfig | None = None,
                  input_example: np.ndarray | None = None, calibration: dict | None = None) -> str | None:
        """Per-epoch metrics (step = epoch), final metrics, JSON/figure artifacts and the model; returns the model URI.

        Final metrics are logged once, at step 0: one value per run, which the UI's chart view compares as bars
        across runs (at step = epochs they were lone dots on a step axis)."""
        client = MlflowClient()
        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, epoch) for epoch, row in enumerate(history, start=1) for k, v in row.items()]
        ms += [Metric(k, float(v), now, 0) for k, v in final.items()]
        for i in range(0, len(ms), 1000):  # MLflow caps a batch at 1000 metrics
            client.log_batch(run_id, metrics=ms[i : i + 1000])
        for name, obj in artifacts.items():
            if hasattr(obj, "savefig"):
                client.log_figure(run_id, obj, name)
            elif name.endswith(".csv"):
                client.log_text(run_id, obj.to_csv(index=False), name)
            else:
                client.log_dict(run_id, obj, name)
        if model is None:
            return None
        return log_model(run_id, model, cfg, input_example, calibration)

    def log_datasets(self, run_id: str, name: str, sources: list[str], digest: str, contexts: dict[str, dict], columns: list | None = None) -> None:
        """The feature shards a run learned from, as MLflow datasets: one input per context
        (``training``/``validation``/``test``, each ``{"profile": {...}, "tags": {...}}``) whose digest is the data
        fingerprint, whose profile (speakers, recordings, hours per corpus and sex) the UI's Dataset drawer shows,
        whose schema is the shards' columns (``columns``: a pyarrow schema) and whose tags repeat the counts."""
        MlflowClient().log_inputs(run_id, datasets=dataset_inputs(name, sources, digest, contexts, columns))

    def describe(self, run_id: str, markdown: str) -> None:
        """The run's description in the MLflow UI."""
        MlflowClient().set_tag(run_id, "mlflow.note.content", markdown)

    def tag(self, run_id: str, tags: dict[str, str]) -> None:
        MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, run_id: str, ok: bool = True, error: str | None = None, end_time_s: float | None = None) -> None:
        """End the run ``run_id`` (FAILED with ``error``), at ``end_time_s`` (wall clock; default now): a grid
        point ends when its training did, not when the parent got round to logging it."""
        self.stop_system_metrics(run_id)  # its last sample lands before the run's end time
        client = MlflowClient()
        if error:
            client.log_text(run_id, error, "error.txt")
            client.set_tag(run_id, "voiceclf.error", error.strip().splitlines()[-1][:500])
        client.set_terminated(run_id, "FINISHED" if ok else "FAILED", end_time=_ms(end_time_s))

    def log_summary(self, table, winner_run_id: str | None, winner_metrics: dict, winner_tags: dict | None = None) -> None:
        """The grid table as artifacts; the winner's summary metrics on the parent under the names its children
        use (so the ``xval_score`` column reads the same on a parent and its points), at step 0; ``winner_tags``
        on the parent (e.g. ``winner``: the winning point's name)."""
        client = MlflowClient()
        client.log_text(self.parent_id, table.to_csv(index=False), "grid_summary.csv")
        client.log_text(self.parent_id, table.to_string(index=False), "grid_summary.txt")
        if winner_run_id:
            tags = {"voiceclf.winner_run_id": winner_run_id, **(winner_tags or {})}
            client.log_batch(self.parent_id, metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in winner_metrics.items()],
                             tags=[RunTag(k, str(v)) for k, v in tags.items()])

