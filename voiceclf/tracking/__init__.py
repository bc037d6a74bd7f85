"""The only package that talks to MLflow: the store, a grid's runs, the registry, logged models.

Callers use the names below (``tracking.connect``, ``tracking.GridRuns``, ``tracking.load``, ...); each
lives in the module of its idea:

- ``store``: where the store is and what fails in it (names, errors, ``connect``, the experiment);
- ``runs``: a grid's parent and child runs and what they log; ``system_metrics`` and ``datasets`` beside them;
- ``registry``: register a version, move the champion alias, resolve a ``models:/`` URI to its version;
- ``logged_model``: log a model as pt2 with its weights and FeatureConfig, and load it back safely.
"""
from voiceclf.tracking.datasets import ShardDataset
from voiceclf.tracking.logged_model import WEIGHTS_FILE, LoadedModel, load, log_model
from voiceclf.tracking.registry import (URI_FORMS, champion_uri, register_champion, register_version, registered_config,
                                        registered_version)
from voiceclf.tracking.runs import GridRuns
from voiceclf.tracking.store import (ALIAS, DEFAULT_MODEL_URI, DEMO_NAME, EXPERIMENT, EXPERIMENT_DESCRIPTION, EXPERIMENT_KIND,
                                     MODEL_NAME, NoChampion, ServerUnreachable, StoreError, TrackingError, connect,
                                     experiment_id, run_context_tags, store_error, store_errors)
from voiceclf.tracking.system_metrics import SYSTEM_METRICS_INTERVAL_S, SystemMetrics

__all__ = [
    "ALIAS", "DEFAULT_MODEL_URI", "DEMO_NAME", "EXPERIMENT", "EXPERIMENT_DESCRIPTION", "EXPERIMENT_KIND", "MODEL_NAME",
    "SYSTEM_METRICS_INTERVAL_S", "URI_FORMS", "WEIGHTS_FILE", "GridRuns", "LoadedModel", "NoChampion", "ServerUnreachable",
    "ShardDataset", "StoreError", "SystemMetrics", "TrackingError", "champion_uri", "connect", "experiment_id", "load",
    "log_model", "register_champion", "register_version", "registered_config", "registered_version", "run_context_tags",
    "store_error", "store_errors",
]
