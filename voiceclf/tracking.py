"""The only module that talks to MLflow: tracking URIs, runs, logging, the registry, loading models.

Logging goes through ``MlflowClient`` with explicit run ids, so the parent of a grid search can log its
children in any order and mark a crashed one FAILED. The one exception is :func:`log_model`: MLflow's
``log_model`` logs into the active run, so it opens the given run for that call only.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

from voiceclf.calibration import IDENTITY, Calibration
from voiceclf.config import LABELS, REPO_ROOT, ConfigError, FeatureConfig, default_tracking_uri

EXPERIMENT = "voiceclf"
MODEL_NAME = "voiceclf"
#: ``make demo``'s experiment and registered model: synthetic versions stay out of the real registry.
DEMO_NAME = "voiceclf-demo"
ALIAS = "champion"
DEFAULT_MODEL_URI = f"models:/{MODEL_NAME}@{ALIAS}"


class TrackingError(RuntimeError):
    """The tracking store or the model cannot be reached or used."""


class NoChampion(TrackingError):
    """No model version carries the alias asked for."""

    missing = "model"  # what to make first; the jobs turn it into a next step


class ServerUnreachable(TrackingError):
    """The tracking URI names a server that does not answer."""

    missing = "server"


class StoreError(TrackingError):
    """The tracking store's database cannot be used: locked by another process, damaged, or its disk full."""


def store_error(e: BaseException) -> StoreError | None:
    """A StoreError naming the store when ``e`` (or what it wraps) is an error of the store's database, else None.

    MLflow wraps SQLAlchemy's errors (themselves wrapping sqlite3's) in an MlflowException, or lets them through
    raw: found by the exception chain, so that a locked store is never reported as "no model registered".
    """
    import sqlite3

    chain, seen = [], e
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    db = next((x for x in chain if isinstance(x, sqlite3.Error) or type(x).__module__.startswith("sqlalchemy.")), None)
    if db is None:
        return None
    reason = (str(getattr(db, "orig", None) or db).strip().splitlines() or [type(db).__name__])[0]
    if "locked" in reason:
        step = "another process holds it (a run writing, an `mlflow ui` on it): retry when it is done, or share a tracking server (`make server`)"
    elif "malformed" in reason or "not a database" in reason:
        step = "the database file is damaged: restore it from a backup, or point MLFLOW_TRACKING_URI at another store"
    elif "full" in reason or "disk I/O" in reason:
        step = "its disk is full or failing: free space and rerun"
    else:
        step = "check the store (VOICECLF_TRACEBACK=1 shows the traceback)"
    return StoreError(f"tracking store {mlflow.get_tracking_uri()}: {reason}; {step}")


def store_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the tracking store failed mid-run (e.g. the server died)."""
    import requests

    return (MlflowException, requests.RequestException, TrackingError)


def connect(uri: str | None = None) -> str:
    """Point MLflow at ``uri`` (default: ``MLFLOW_TRACKING_URI``, else the embedded SQLite store).

    A tracking server is checked first, so a job fails fast with the URI in the message instead of
    retrying for minutes.
    """
    uri = uri or default_tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                r.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerUnreachable(f"cannot reach the MLflow tracking server at {uri} ({reason})") from None
    elif scheme == "sqlite":
        Path(urlparse(uri).path).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        MlflowClient()  # resolves both stores: an unsupported scheme (ftp://...) fails here, in one line
    except MlflowException as e:
        raise TrackingError(f"cannot use the tracking URI {uri}: {e.message.strip().split('. ')[0]}; use sqlite:///..., http(s)://... or a database URI") from None
    return uri


def _artifact_root(uri: str) -> str | None:
    # A SQLite store keeps artifacts beside its database (mlruns/artifacts for the embedded one), so
    # runs work from any working directory; a server decides for itself (None).
    if urlparse(uri).scheme == "sqlite":
        return str(Path(urlparse(uri).path).parent / "artifacts")  # a path: MLflow mangles file:/// URIs here
    return None


EXPERIMENT_DESCRIPTION = """Adult female vs male voices. One parent run per `train` call, one nested run per grid point.

- `val_score`: speaker-balanced accuracy on the validation speakers (accuracy per speaker, averaged within each sex, then over the sexes), mean over corpora; it picks each point's epoch (`best_epoch`, `best_val_*`).
- `xval_score`: with two or more training corpora, the point is trained again without each corpus in turn and scored on it; the mean ranks the grid points. This is how a model does on a corpus it never saw.
- `test_score`, `test_speaker_bacc.<corpus>`: the same on held-out speakers (with `--holdout-corpus`, a whole held-out corpus).
- The winner becomes `models:/voiceclf@champion` only if its `test_score` is at least the current champion's on the same held-out speakers."""


#: MLflow 3's UI opens an experiment in its GenAI view unless this tag names another kind; this one opens
#: "Model training", where the runs are.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(name: str = EXPERIMENT) -> str:
    client = MlflowClient()
    try:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            if EXPERIMENT_KIND[0] not in exp.tags:  # made before the tag was set, or by hand: a user's choice is kept
                client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
            return exp.experiment_id
        exp_id = client.create_experiment(name, artifact_location=_artifact_root(mlflow.get_tracking_uri()))
        client.set_experiment_tag(exp_id, "mlflow.note.content", EXPERIMENT_DESCRIPTION)
        client.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
        return exp_id
    except MlflowException as e:
        raise (store_error(e) or TrackingError(f"tracking store {mlflow.get_tracking_uri()}: {e.message}")) from None


def run_context_tags() -> dict[str, str]:
    """Who ran which code: ``mlflow.user``, ``mlflow.source.name``/``type`` (what MLflow's fluent ``start_run`` adds,
    from its own context providers) and the git commit, branch and remote of the voiceclf checkout, for the UI's
    User and Source columns. ``MlflowClient.create_run`` adds none of them by itself.

    The git tags are of the code that trains (this package's checkout), not of whatever script called it; MLflow
    reads them with GitPython (fixed arguments; credentials stripped from the remote). None outside a checkout.
    """
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import git_utils
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL

    tags = resolve_tags()
    for key, read in ((MLFLOW_GIT_COMMIT, git_utils.get_git_commit), (MLFLOW_GIT_BRANCH, git_utils.get_git_branch),
                      (MLFLOW_GIT_REPO_URL, git_utils.get_git_repo_url)):
        value = read(str(REPO_ROOT))
        if value:
            tags[key] = value
    return tags


def _ms(seconds: float | None) -> int | None:
    """Wall-clock seconds (``time.time()``) as MLflow's epoch milliseconds."""
    return None if seconds is None else int(round(seconds * 1000))


def _flat(d: dict, prefix: str = "") -> dict[str, str]:
    return {f"{prefix}{k}": str(v) for k, v in d.items()}


# ----------------------------------------------------------------------------- system metrics
# Seconds between samples. MLflow's default (10 s) leaves a grid point of a few seconds with nothing
# and a one-minute point with six points; 2 s gives a curve for both, and a sample costs one batched
# write (~10 values; MLflow's batch logger holds writes to under a tenth of the elapsed time).
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it, as it does for MLflow's own runs.
SYSTEM_METRICS_INTERVAL_S = 2.0


class SystemMetrics(SystemMetricsMonitor):
    """MLflow's system metrics for one run: the monitors and ``system/...`` names of
    ``mlflow.start_run(log_system_metrics=True)`` (CPU %, memory, disk, network; GPU with nvidia-ml-py),
    with a loop fit for runs of a few seconds.

    MLflow's loop samples at the start of each interval and drops the last one: a run shorter than the
    interval gets nothing, and the first CPU figure is psutil's meaningless 0.0 for a new thread. Here
    each sample closes its interval (CPU % is over that interval), :meth:`finish` logs the last partial
    one, so every run gets at least one sample, and the run's status is not polled (the job always calls
    :meth:`finish`), which saves a store read per sample. All writes happen in this thread.
    """

    def __init__(self, run_id: str, interval_s: float = SYSTEM_METRICS_INTERVAL_S) -> None:
        super().__init__(run_id, sampling_interval=interval_s, samples_before_logging=1)

    @property
    def gpu(self) -> bool:
        """Whether GPU figures are sampled (an NVIDIA GPU with nvidia-ml-py, or ROCm)."""
        return any("GPU" in type(m).__name__ or "ROCM" in type(m).__name__ for m in self.monitors)

    def monitor(self) -> None:
        import psutil

        psutil.cpu_percent()  # psutil measures CPU % per thread, from its previous call: this thread's zero
        try:
            while True:
                stopping = self._shutdown_event.wait(float(self.sampling_interval))
                self.collect_metrics()
                self.publish_metrics(self.aggregate_metrics())
                if stopping:
                    break
            self.mlflow_logger.flush()
        except Exception as e:  # the store went away: the job's own calls fail and say so; this thread just ends
            import logging

            logging.getLogger(__name__).debug("system metrics for run %s stopped: %s", self._run_id, e)

    def stop(self) -> None:
        """Ask the thread to log the last, partial interval and end (without waiting for it)."""
        self._shutdown_event.set()

    def finish(self, timeout_s: float = 10.0) -> None:
        """Log the last, partial interval and stop; a store that stopped answering holds the job up at most ``timeout_s``."""
        self.stop()
        if self._process is not None:
            self._process.join(timeout_s)
            self._process = None


# ----------------------------------------------------------------------------- runs
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
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # "can be interpreted in multiple ways": all of them local folders
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(",".join(sources))
        schema = _mlflow_schema(columns) if columns is not None else None
        # one dataset per context (MLflow keeps one input per dataset and run): the split's speakers are part of its digest
        inputs = []
        for ctx, about in contexts.items():
            tags = about.get("tags", {})
            split_digest = hashlib.sha256(f"{digest}\t{ctx}\t{tags.get('speakers_digest', '')}".encode()).hexdigest()[:16]
            entity = ShardDataset(source, name=f"{name} {ctx}", digest=split_digest, schema=schema, profile=about.get("profile"))._to_mlflow_entity()
            inputs.append(DatasetInput(entity, [InputTag("mlflow.data.context", ctx), InputTag("data_fingerprint", digest),
                                                *(InputTag(k, str(v)) for k, v in tags.items())]))
        MlflowClient().log_inputs(run_id, datasets=inputs)

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


class ShardDataset(MetaDataset):
    """Feature shards as an MLflow dataset: metadata only (the shards stay where they are), plus a profile.

    MLflow's ``MetaDataset`` has no profile, so the UI's Dataset drawer said "No profile available"; MLflow's
    own datasets (numpy, pandas) put theirs as JSON under ``profile`` in ``to_dict``, as this one does.
    """

    def __init__(self, source, name: str, digest: str, schema=None, profile: dict | None = None):
        self._profile = profile
        super().__init__(source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> dict | None:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        if self._profile is not None:
            config["profile"] = json.dumps(self._profile)
        return config


def _mlflow_schema(columns):
    """A pyarrow schema (the shards') as an MLflow column schema, which the Dataset drawer lists; a fixed-size
    list (the features) becomes an array of its item type. Hand-written: MLflow infers schemas from pandas or
    numpy data, not from a pyarrow schema, and the shards need not be read for it."""
    import pyarrow as pa
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    def dtype(t):
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
            return DataType.string
        if pa.types.is_boolean(t):
            return DataType.boolean
        if pa.types.is_integer(t):
            return DataType.long if t.bit_width > 32 else DataType.integer
        if pa.types.is_float32(t) or pa.types.is_float16(t):
            return DataType.float
        if pa.types.is_floating(t):
            return DataType.double
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
            return Array(dtype(t.value_type))
        return DataType.string

    return Schema([ColSpec(dtype(f.type), f.name, required=not f.nullable) for f in columns])


#: The model's state dict beside its pt2 archive, in the model's ``extra_files``: what score loads.
WEIGHTS_FILE = "weights.safetensors"


def log_model(run_id: str, model, cfg: FeatureConfig, input_example: np.ndarray, calibration: dict | None = None) -> str:
    """Log the model with the pytorch flavour in pt2 (torch.export) format: no pickled code.

    The FeatureConfig goes into the MLmodel metadata, so the model carries the config it was trained with.
    Beside the pt2 (what MLflow and other tools load), its state dict as safetensors and the arguments that
    build the module again (metadata ``weights``): score rebuilds the module from voiceclf.model and fills it,
    in ~0.1 s where loading the pt2 takes ~2 s (torch.export's deserializer imports torch._dynamo).
    ``calibration`` (``calibration.Calibration.to_dict()``: two numbers, plain JSON) goes into the metadata
    too: score maps each file's pooled p(male) with it.
    """
    import torch
    from mlflow.models import infer_signature

    from voiceclf import safeio
    from voiceclf.model import architecture

    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(input_example)).numpy()
    signature = infer_signature(input_example, out)
    with tempfile.TemporaryDirectory(prefix="voiceclf-weights-") as tmp, mlflow.start_run(run_id=run_id, nested=True):
        weights = Path(tmp) / WEIGHTS_FILE
        safeio.write_safetensors({k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}, weights)
        info = mlflow.pytorch.log_model(
            model, name="model", serialization_format="pt2", signature=signature, input_example=input_example,
            metadata={"feature_config": cfg.to_dict(), "labels": list(LABELS),
                      "weights": {"path": f"extra_files/{WEIGHTS_FILE}", **architecture(model)},
                      **({"calibration": calibration} if calibration else {})},
            extra_files=[str(weights)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        )
    return info.model_uri


# ----------------------------------------------------------------------------- registry
def register_version(model_uri: str, run_id: str, metrics: dict, cfg: FeatureConfig, *, promote: bool = True, reason: str = "",
                     description: str = "", model_name: str = MODEL_NAME) -> int:
    """Register a new version of ``model_name`` from ``model_uri``; give it the ``champion`` alias if ``promote``.

    The version's tags say what it is (run, feature config, metrics) and why it was or was not promoted. The run
    of the version holding the alias carries the run tag ``champion`` (``version N (<model>)``), which moves with
    the alias, so the experiment's run table shows which run scoring uses.
    """
    client = MlflowClient()
    tags = {"run_id": run_id, "feature_config": cfg.to_json(), "feature_set": cfg.feature_set, "family": cfg.family,
            "promoted": str(promote).lower(), "promotion": reason,
            **{k: f"{v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float))}}
    # register_model links the version to the logged model (a server insists on it) and waits until READY
    mv = mlflow.register_model(model_uri, model_name, tags=tags)
    if description:
        client.update_model_version(model_name, mv.version, description=description)
    if not client.get_registered_model(model_name).description:
        client.update_registered_model(model_name, description="Adult female (0) vs male (1) voice classifier. Families: the model-card CNN on "
                                       "1-s MFC windows, or a head on 1.6-s pretrained speaker embeddings; the alias champion marks the one scoring uses.")
    if promote:
        try:
            previous = client.get_model_version_by_alias(model_name, ALIAS).tags.get("run_id")
        except MlflowException:
            previous = None
        client.set_registered_model_alias(model_name, ALIAS, mv.version)
        if previous and previous != run_id:
            try:
                client.delete_tag(previous, ALIAS)
            except MlflowException:  # that run was deleted, or never had the tag (registered before it existed)
                pass
        client.set_tag(run_id, ALIAS, f"version {mv.version} ({model_name})")  # the version first: the tag column is narrow
    return int(mv.version)


def register_champion(model_uri: str, run_id: str, metrics: dict, cfg: FeatureConfig, model_name: str = MODEL_NAME) -> int:
    """Register a new version and make it the champion unconditionally."""
    return register_version(model_uri, run_id, metrics, cfg, promote=True, reason="registered as champion", model_name=model_name)


def champion_uri(model_name: str = MODEL_NAME) -> str:
    """``models:/<model_name>@champion``: what scoring uses."""
    return f"models:/{model_name}@{ALIAS}"


@dataclass
class LoadedModel:
    module: object  # a torch module: (N, *cfg.shape) windows → (N, 2) logits
    cfg: FeatureConfig
    uri: str
    version: str  # registry version, or "" for a runs:/ or logged-model URI
    calibration: Calibration = IDENTITY  # the identity for a model logged without one


def _model_version(model_uri: str):
    """The registry version a ``models:/name@alias`` or ``models:/name/N`` URI names; None for any other URI.

    Raises :class:`NoChampion` (nothing under that name or alias) or :class:`TrackingError` (no such version).
    """
    if not model_uri.startswith("models:/"):
        return None
    ref = model_uri[len("models:/"):]
    name, _, alias = ref.partition("@")
    client = MlflowClient()
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if "/" in ref and ref.split("/", 1)[1].isdigit():
            return client.get_model_version(*ref.split("/", 1))
        return None
    except MlflowException as e:
        if (broken := store_error(e)) is not None:
            raise broken from None
        if not alias and "/" in ref and _registered(name := ref.split("/", 1)[0]):
            raise TrackingError(f"version {ref.split('/', 1)[1]} of model {name} does not exist in {mlflow.get_tracking_uri()} (versions: {_versions(name)})") from None
        raise NoChampion(f"no model registered as {name}{'@' + alias if alias else ''} in {mlflow.get_tracking_uri()}") from None


def registered_config(model_uri: str) -> tuple[str, str, FeatureConfig] | None:
    """(name, version, FeatureConfig) of a registered version, from its tags alone: no download, no torch.

    Score starts its featurize workers on this while the model loads. None when ``model_uri`` is not a
    registered version or its tags do not say (then :func:`load` says what is wrong).
    """
    try:
        mv = _model_version(model_uri)
        return None if mv is None else (mv.name, str(mv.version), FeatureConfig.from_json(mv.tags["feature_config"]))
    except StoreError:
        raise
    except (TrackingError, MlflowException, KeyError, ConfigError, ValueError):
        return None


#: torch.export's deserializer keeps global state while it loads ("_CURRENT_DESERIALIZER is already set"):
#: one load at a time per process (score loads in a thread while the caller may load another model).
_PT2_LOAD = threading.Lock()


def load(model_uri: str = DEFAULT_MODEL_URI) -> LoadedModel:
    """Load a model and the FeatureConfig it was trained with; refuse one this code cannot reproduce."""
    mv = _model_version(model_uri)
    version = "" if mv is None else mv.version
    # A pickled model runs code when it is loaded: refuse everything but pt2, and have MLflow check
    # that a pt2 archive holds no pickle records either, whatever the environment says.
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    with tempfile.TemporaryDirectory(prefix="voiceclf-model-") as tmp:
        try:
            # downloaded once: what is checked is what is loaded
            local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
            info = mlflow.models.Model.load(local)
        except (MlflowException, OSError) as e:
            raise TrackingError(f"cannot load {model_uri} from {mlflow.get_tracking_uri()}: {_one_line(e)}") from None
        _check_pt2(model_uri, local, info.flavors.get("pytorch"))
        metadata = info.metadata or {}
        meta = metadata.get("feature_config")
        if meta is None:
            raise TrackingError(f"{model_uri} carries no feature_config metadata; it was not logged by voiceclf and cannot be scored")
        try:
            cfg = FeatureConfig.from_dict(meta)
        except ConfigError as e:
            raise TrackingError(f"{model_uri} was trained with a feature config this code cannot reproduce: {e}") from None
        try:
            cal = Calibration.from_dict(metadata.get("calibration"))
        except (ValueError, TypeError, KeyError) as e:
            raise TrackingError(f"{model_uri}: its calibration metadata is not usable ({e}); log or register the model again") from None
        weights = metadata.get("weights")
        if weights:  # logged by this code: the module rebuilt from voiceclf.model, filled with the state dict
            module = _rebuild(model_uri, local, weights, cfg)
        else:  # a model logged before the state dict was (or by hand): its pt2
            try:
                with _PT2_LOAD:
                    module = mlflow.pytorch.load_model(local)
            except Exception as e:  # a damaged archive fails in torch or zipfile as well as in MLflow
                raise TrackingError(f"cannot load {model_uri} from {mlflow.get_tracking_uri()}: {_one_line(e)}") from None
    return LoadedModel(module, cfg, model_uri, str(version), cal)


def _rebuild(model_uri: str, local: str, weights: dict, cfg: FeatureConfig):
    """The module ``build_model`` makes for ``cfg`` and the metadata's arguments, holding the state dict logged beside the pt2."""
    from voiceclf import safeio
    from voiceclf.model import rebuild

    path = _inside(local, weights.get("path"))
    if path is None or not os.path.isfile(path):
        raise TrackingError(f"{model_uri}: its weights file {weights.get('path')!r} is not in the model; log or register the model again")
    try:
        return rebuild(cfg, weights, safeio.read_safetensors(Path(path).read_bytes()))
    except (ValueError, TypeError) as e:
        raise TrackingError(f"{model_uri}: its weights ({weights.get('path')}) do not fit a {cfg.family} model: {e}") from None


def _registered(name: str) -> bool:
    try:
        MlflowClient().get_registered_model(name)
        return True
    except MlflowException:
        return False


def _versions(name: str) -> str:
    found = sorted(int(mv.version) for mv in MlflowClient().search_model_versions(f"name='{name}'"))
    return ", ".join(map(str, found)) or "none"


def _one_line(e: BaseException) -> str:
    text = _without_pickle_advice(str(getattr(e, "message", None) or e).strip())
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _without_pickle_advice(text: str) -> str:
    """MLflow's refusal of a pickle, without its advice to allow pickles: voiceclf never does (a pickle can run code)."""
    if "MLFLOW_ALLOW_PICKLE_DESERIALIZATION" not in text:
        return text
    kept = [s for s in re.split(r"(?<=\.)\s+", text) if "MLFLOW_ALLOW_PICKLE_DESERIALIZATION" not in s]
    return " ".join(kept + ["voiceclf never loads pickles, which can run code when loaded."])


def _inside(local: str, relative) -> str | None:
    """The real path of ``relative`` (a path an MLmodel names) within the downloaded model ``local``; None when it leads outside."""
    root = os.path.realpath(local)
    path = os.path.realpath(os.path.join(local, str(relative or "")))
    return path if os.path.commonpath([path, root]) == root else None


def _check_pt2(model_uri: str, local: str, flavor: dict | None) -> None:
    """Refuse a model that is not a pytorch-flavour pt2 archive before anything in it is read.

    The MLmodel does not name the serialization format; the files do: ``model.pt2`` (torch.export)
    or ``model.pth`` (pickle). Logged code (``code``) would be put on ``sys.path``: refused too.
    """
    if not flavor:
        raise TrackingError(f"{model_uri} is not a pytorch model; voiceclf scores only pytorch models in pt2 format")
    data = _inside(local, flavor.get("model_data"))
    if data is None:
        raise TrackingError(f"{model_uri}: its MLmodel points outside the model ({flavor.get('model_data')!r}); refused")
    if flavor.get("code") or not os.path.isfile(os.path.join(data, "model.pt2")) or os.path.exists(os.path.join(data, "model.pth")):
        found = ", ".join(sorted(os.listdir(data))) if os.path.isdir(data) else "nothing"
        raise TrackingError(f"{model_uri} is not in pt2 format (found {found}{', logged code' if flavor.get('code') else ''}); "
                            "voiceclf loads only pt2 models, never pickles, which can run code when loaded")
    if not zipfile.is_zipfile(os.path.join(data, "model.pt2")):
        raise TrackingError(f"{model_uri}: model.pt2 is damaged (not a complete pt2 archive); log or register the model again")
