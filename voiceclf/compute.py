"""Where a flow's work runs: one set of arguments for featurize, train and score, checked in one place: the worker
processes (``jobs``), the joblib ``backend`` and the Dask ``scheduler`` (:class:`Workers`), and for train and score
the torch ``device`` (:class:`Compute`).

A flow takes them as keyword arguments (``**workers`` / ``**compute``, typed by :class:`WorkerArgs` /
:class:`ComputeArgs`), so a caller writes ``jobs=2, device="cuda"`` wherever it calls, and the defaults and checks
are written once, here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from voiceclf import parallel


class WorkerArgs(TypedDict, total=False):
    """:class:`Workers` as keyword arguments."""

    jobs: int
    backend: str
    scheduler: str | None


class ComputeArgs(WorkerArgs, total=False):
    """:class:`Compute` as keyword arguments."""

    device: str


@dataclass(frozen=True)
class Workers:
    """Worker processes and the engine that runs them; :class:`voiceclf.parallel.EngineError` names a value that cannot be."""

    jobs: int = -1  # worker processes (trainings side by side, for train); -1: one per core
    backend: str = "loky"  # one of parallel.BACKENDS
    scheduler: str | None = None  # the Dask scheduler's address (tcp://host:8786), for backend dask

    def __post_init__(self) -> None:
        parallel.check(self.jobs, self.backend, self.scheduler)  # the one rule, which the engine applies too


@dataclass(frozen=True)
class Compute(Workers):
    """:class:`Workers`, and the torch device a model trains or scores on."""

    device: str = "auto"  # auto: CUDA when torch sees a GPU, else the CPU (voiceclf.model.pick_device); cpu; cuda
