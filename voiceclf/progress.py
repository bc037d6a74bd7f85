"""Progress events: what a flow (featurize, train, score) reports while it works; the jobs draw them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Progress:
    """One progress event: ``done`` of ``total`` units of ``stage`` finished, ``errors`` of them failed."""

    stage: str
    done: int
    total: int
    errors: int = 0
    unit: str = "files"
    note: str = ""  # what is happening now, e.g. the epoch of a training


OnProgress = Callable[[Progress], None]


def quiet(_: Progress) -> None:
    """The default ``on_progress``: reports go nowhere."""
