"""The model registry: register a version, move the champion alias, and resolve a ``models:/`` URI to its version."""
from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException
# _parse_model_uri is private: MLflow 3 has no public parser of models:/ URIs. It is the one MLflow's own
# get_model_name_and_version and models:/ artifact repository use, so a URI is read here exactly as MLflow
# downloads it; tests/library/test_registry.py pins every form, so a change in MLflow shows there.
from mlflow.store.artifact.utils.models import _parse_model_uri, get_model_name_and_version
from mlflow.tracking import MlflowClient
from mlflow.utils.uri import is_models_uri

from voiceclf.config import ConfigError, FeatureConfig
from voiceclf.tracking.store import ALIAS, MODEL_NAME, NoChampion, StoreError, TrackingError, store_error

#: What a models:/ URI may say, for the message when it says something else.
URI_FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION, models:/NAME/latest or models:/NAME/STAGE"


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


def registered_version(model_uri: str):
    """The registry's ``ModelVersion`` a ``models:/`` URI names (``models:/name@alias``, ``models:/name/3``,
    ``models:/name/latest``, ``models:/name/Production``), resolved by MLflow as it resolves a download;
    None for any other URI (``runs:/...``, a folder, ``models:/<logged model id>``), which is in no registry.

    Raises :class:`NoChampion` (no model under that name, no version holds that alias, or none at all), a
    :class:`StoreError` (the store failed) or a :class:`TrackingError` (no such version or stage; a malformed URI).
    """
    if not is_models_uri(model_uri):
        return None
    try:
        ref = _parse_model_uri(model_uri)
    except MlflowException:
        raise TrackingError(f"{model_uri} is not a model URI MLflow reads; use {URI_FORMS}") from None
    if ref.model_id is not None:
        return None
    client = MlflowClient()
    try:
        name, version = get_model_name_and_version(client, model_uri)
        return client.get_model_version(name, str(version))
    except MlflowException as e:
        if (broken := store_error(e)) is not None:
            raise broken from None
        raise _not_found(ref) from None


def _not_found(ref) -> TrackingError:
    """What is missing when ``ref`` (a parsed models:/ URI) names no version: a model, an alias, a version or a stage."""
    where = mlflow.get_tracking_uri()
    if not _registered(ref.name):
        return NoChampion(f"no model registered as {ref.name}{'@' + ref.alias if ref.alias else ''} in {where}")
    if ref.alias:
        return NoChampion(f"no model registered as {ref.name}@{ref.alias} in {where}")
    versions = _versions(ref.name)
    if ref.version:
        return TrackingError(f"version {ref.version} of model {ref.name} does not exist in {where} (versions: {versions})")
    if ref.stage:
        return TrackingError(f"no version of model {ref.name} is in stage {ref.stage} in {where} (versions: {versions}); "
                             f"stages are deprecated in MLflow: use {ref.name}@{ALIAS}")
    return NoChampion(f"model {ref.name} has no versions in {where}")


def registered_config(model_uri: str) -> tuple[str, str, FeatureConfig] | None:
    """(name, version, FeatureConfig) of a registered version, from its tags alone: no download, no torch.

    Score starts its featurize workers on this while the model loads. None when ``model_uri`` is not a
    registered version or its tags do not say (then ``load`` says what is wrong).
    """
    try:
        mv = registered_version(model_uri)
        return None if mv is None else (mv.name, str(mv.version), FeatureConfig.from_json(mv.tags["feature_config"]))
    except StoreError:
        raise
    except (TrackingError, MlflowException, KeyError, ConfigError, ValueError):
        return None


def _registered(name: str) -> bool:
    try:
        MlflowClient().get_registered_model(name)
        return True
    except MlflowException:
        return False


def _versions(name: str) -> str:
    """The versions of ``name``, for a message: "1, 2, 3", "none", or "unknown" when the store cannot list them."""
    try:
        found = sorted(int(mv.version) for mv in MlflowClient().search_model_versions(f"name='{name}'"))
    except MlflowException:  # e.g. a name with a quote, which the filter cannot hold
        return "unknown"
    return ", ".join(map(str, found)) or "none"
