"""A model as MLflow keeps it: logged as pt2 with its weights and FeatureConfig, loaded back refusing anything else."""
from __future__ import annotations

import os
import re
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from voiceclf.calibration import IDENTITY, Calibration
from voiceclf.config import LABELS, ConfigError, FeatureConfig
from voiceclf.tracking.registry import registered_version
from voiceclf.tracking.store import DEFAULT_MODEL_URI, TrackingError

#: The model's state dict beside its pt2 archive, in the model's ``extra_files``: what score loads.
WEIGHTS_FILE = "weights.safetensors"


def log_model(run_id: str, model, cfg: FeatureConfig, input_example: np.ndarray, calibration: dict | None = None) -> str:
    """Log the model with the pytorch flavour in pt2 (torch.export) format: no pickled code.

    The FeatureConfig goes into the MLmodel metadata, so the model carries the config it was trained with.
    Beside the pt2 (what MLflow and other tools load), its state dict as safetensors and the arguments that
    build the module again (metadata ``weights``): score rebuilds the module from voiceclf.model and fills it,
    in ~0.1 s where loading the pt2 takes ~2 s (torch.export's deserializer imports torch._dynamo).
    ``calibration`` (``calibration.Calibration.to_dict()``: two numbers, plain JSON) goes into the metadata
    too: score maps each file's pooled p(male) with it. MLflow's ``log_model`` logs into the active run, so
    the run ``run_id`` is opened for this call only (everything else is logged by run id, see ``runs``).
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


@dataclass
class LoadedModel:
    """A model ready to score: its module, the FeatureConfig it was trained with, where it came from, its calibration."""

    module: object  # a torch module: (N, *cfg.shape) windows → (N, 2) logits
    cfg: FeatureConfig
    uri: str
    version: str  # registry version, or "" for a runs:/ or logged-model URI
    calibration: Calibration = IDENTITY  # the identity for a model logged without one


#: torch.export's deserializer keeps global state while it loads ("_CURRENT_DESERIALIZER is already set"):
#: one load at a time per process (score loads in a thread while the caller may load another model).
_PT2_LOAD = threading.Lock()


def load(model_uri: str = DEFAULT_MODEL_URI) -> LoadedModel:
    """Load a model and the FeatureConfig it was trained with; refuse one this code cannot reproduce."""
    mv = registered_version(model_uri)
    version = "" if mv is None else mv.version
    # an alias, latest or a stage can move while the model downloads: what is fetched is the version resolved here
    source = model_uri if mv is None else f"models:/{mv.name}/{mv.version}"
    # A pickled model runs code when it is loaded: refuse everything but pt2, and have MLflow check
    # that a pt2 archive holds no pickle records either, whatever the environment says.
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    with tempfile.TemporaryDirectory(prefix="voiceclf-model-") as tmp:
        try:
            # downloaded once: what is checked is what is loaded
            local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)
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
