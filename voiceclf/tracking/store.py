"""Where the tracking store is and what fails in it: names, errors, connect, the experiment, who ran what."""
from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from voiceclf.config import REPO_ROOT, default_tracking_uri

EXPERIMENT = "voiceclf"
MODEL_NAME = "voiceclf"
#: ``make demo``'s experiment and registered model: synthetic versions stay out of the real registry.
DEMO_NAME = "voiceclf-demo"
ALIAS = "champion"
DEFAULT_MODEL_URI = f"models:/{MODEL_NAME}@{ALIAS}"


class TrackingError(RuntimeError):
    """The tracking store or the model cannot be reached or used."""


class NoChampion(TrackingError):
    """No version answers the URI: no model of that name, no version with that alias, or none at all (train makes one)."""

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

