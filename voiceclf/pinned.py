"""Pretrained weights pinned by sha256: found in the installed wheel that ships them, read only if they hash to the
value the FeatureConfig names (the speech detector's and the speaker encoder's alike)."""
from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path


class WeightsError(RuntimeError):
    """Pretrained weights that are missing, or not the ones the FeatureConfig names."""

    missing: str | None = None  # what to install, when that is the fix; the jobs turn it into a next step


class WeightsMissing(WeightsError):
    """The wheel that holds the weights is not installed."""

    missing = "weights"


def in_wheel(dist: str, rel: str) -> Path | None:
    """Where the installed distribution ``dist`` keeps its file ``rel`` (found without importing the package), or None."""
    try:
        for f in importlib.metadata.files(dist) or []:
            if f.as_posix() == rel:
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    return None


def not_installed(what: str, wheel: str) -> WeightsMissing:
    """The error of weights whose wheel is not installed, e.g. ``not_installed("Silero VAD", "silero-vad==6.2.3")``."""
    return WeightsMissing(f"the {what} weights are not installed (they come with the {wheel} wheel)")


def read_pinned(path: Path, sha256: str, error: type[Exception], what: str, hint: str) -> bytes:
    """The bytes of a pretrained-weights file, only if they hash to ``sha256``; else ``error`` naming both hashes."""
    data = path.read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise error(f"{path}: the {what} weights have sha256 {found[:12]}…, but the features were defined with {sha256[:12]}…; {hint}")
    return data
