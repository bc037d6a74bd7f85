"""Files → windows in batches: the unit of work a parallel worker runs, shared by featurize and score.

A worker gets a batch of files (never one tiny task per file) and returns plain arrays; a file
that cannot be read becomes a result with an error code instead of an exception, so one bad
file never stops a batch.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from voiceclf import audio, features
from voiceclf.config import FeatureConfig


@dataclass
class Item:
    """One input file: where it is and what is known about it."""

    path: str  # relative to source
    source: str
    speaker: str | None = None
    label: str | None = None
    sha256: str | None = None  # filled in by the worker when not known yet

    @property
    def abspath(self) -> str:
        return os.path.join(self.source, self.path)


@dataclass
class Result:
    item: Item
    windows: features.Windows | None = None
    source_sample_rate: int | None = None
    duration_s: float | None = None
    error: str | None = None  # machine-readable code: corrupt, empty, not_audio, too_long, no_speech, ...
    message: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_windows(self) -> int:
        return 0 if self.windows is None else len(self.windows)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def featurize_file(item: Item, cfg: FeatureConfig) -> Result:
    """Decode one file and cut its windows; every failure becomes an error result."""
    try:
        with open(item.abspath, "rb") as f:
            data = f.read()
    except OSError as e:
        return Result(item, error="unreadable", message=f"{item.abspath}: {e.strerror or e}")
    item.sha256 = item.sha256 or hashlib.sha256(data).hexdigest()
    try:
        decoded = audio.load(item.abspath, cfg, data=data)
    except audio.AudioError as e:
        return Result(item, error=e.code, message=str(e))
    except Exception as e:  # a decoder bug must not stop the batch either; keep the cause
        return Result(item, error="decode_failed", message=f"{item.abspath}: {type(e).__name__}: {e}")
    wins = features.extract(decoded.samples, cfg)
    result = Result(item, windows=wins, source_sample_rate=decoded.source_sample_rate, duration_s=decoded.duration_s)
    if len(wins) == 0:
        result.error, result.message = "no_speech", f"{item.abspath}: no voiced region found (silent or too quiet)"
    return result


def featurize_batch(items: list[Item], cfg: FeatureConfig) -> list[Result]:
    """Worker entry point: one result per item, in order.

    BLAS runs single-threaded here: parallelism comes from the worker processes, and a fixed
    thread count keeps sums in one order, so features are bit-identical for any --jobs or backend.
    """
    with threadpool_limits(limits=1):
        return [featurize_file(it, cfg) for it in items]


def batches(items: list, n_jobs: int, max_size: int = 32) -> list[list]:
    """Split items into batches: several per worker for load balance, none larger than max_size."""
    workers = max(1, n_jobs if n_jobs > 0 else (os.cpu_count() or 1))
    size = int(np.clip(len(items) // (workers * 4) or 1, 1, max_size))
    return [items[i : i + size] for i in range(0, len(items), size)]
