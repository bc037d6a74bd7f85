"""Scoring: every file under some folders → a report row (and speech turns) with a registered model, featurized
on the fly with the model's own FeatureConfig."""
from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Unpack

import numpy as np
import pandas as pd

from voiceclf import corpus, file_windows, safeio
from voiceclf.compute import Compute, ComputeArgs
from voiceclf.config import FeatureConfig
from voiceclf.extract import ModelError, check_weights, featurized
from voiceclf.progress import OnProgress, Progress, quiet

# MLflow and torch take seconds to import: tracking, model and score are imported where they are used.
if TYPE_CHECKING:
    from voiceclf import tracking

log = logging.getLogger("voiceclf")


@dataclass
class ScoreResult:
    """What :func:`score_dirs` produced: one report row per file, one segment row per speech turn (voiceclf.turns)."""

    report: pd.DataFrame
    segments: pd.DataFrame
    model_uri: str
    model_version: str
    device: str
    seconds: float  # the whole call, model loading included
    loop_seconds: float  # the parallel featurize-and-score loop, as featurize's rate is timed
    first_scored_s: float | None  # from the call to the first batch of files scored


def collect(dirs: Sequence[str | os.PathLike]) -> tuple[list[file_windows.Item], list[file_windows.Result]]:
    """Every file under the folders: items to featurize, and hidden files reported (never skipped silently)."""
    items, hidden = [], []
    for d in map(Path, corpus.unique_sources(dirs)):  # a folder given twice is scored once
        if not d.is_dir():
            raise corpus.CorpusError(f"{d}: no such directory")
        for rel in corpus.list_files(d):
            it = file_windows.Item(path=safeio.name_as_text(rel), source=safeio.name_as_text(str(d)))  # a name that is not UTF-8 as lossless text
            if any(part.startswith(".") for part in Path(rel).parts):
                hidden.append(file_windows.Result(it, error="hidden", message=f"{it.abspath}: hidden file, not scored (rename it to score it)"))
            else:
                items.append(it)
    return items, hidden


def _on_device(model: tracking.LoadedModel, cfg: FeatureConfig, device):
    """The model's module on ``device``, tried on one window first: a model that cannot run there
    fails here, in one line, not in the middle of the batch."""
    from voiceclf.model import p_male

    try:
        module = model.module.to(device)
        p_male(module, np.zeros((1, *cfg.shape), dtype=np.float32))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(f"{model.uri} cannot run on {device}: {type(e).__name__}: {first}; try the CPU") from None
    return module


class _Model:
    """The model that scores, loading in a thread while the workers featurize.

    A registered version's tags hold its FeatureConfig: the workers start featurizing on it while the model
    downloads and loads in a thread (seconds of MLflow and torch), pinned to that version even if the alias
    moves meanwhile. The loaded model's own config must then be the same, or nothing is scored.
    """

    def __init__(self, uri: str) -> None:
        from voiceclf import tracking

        self.uri, self.loader, self.pending, self.model, self.module = uri, None, None, None, None
        registered = tracking.registered_config(uri)
        if registered is None:
            self.model = tracking.load(uri)
            self.cfg, self.version = self.model.cfg, self.model.version
        else:
            name, self.version, self.cfg = registered
            self.loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="voiceclf-model-load")
            self.pending = self.loader.submit(tracking.load, f"models:/{name}/{self.version}")

    def ready(self, device):
        """The model's module on the device, once it is loaded and known to read these features."""
        if self.module is None:
            import torch

            if self.model is None:
                self.model = self.pending.result()
                if self.model.cfg != self.cfg:
                    raise ModelError(f"{self.uri}: version {self.version} was trained with another feature config than its tags say; "
                                     "register it again")
            # Inference is a small share of the work (thousands of windows/s on one core); more torch threads
            # in the parent only spin against the featurize workers for the same cores.
            torch.set_num_threads(1)
            self.module = _on_device(self.model, self.cfg, device)
        return self.module

    def close(self) -> None:
        """Wait for the loading thread, whatever happened: it must not outlive the call."""
        if self.loader is not None:
            self.loader.shutdown(wait=True)


def score_dirs(
    dirs: Sequence[str | os.PathLike],
    *,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    threshold: float = 0.5,
    min_confidence: float = 0.0,
    on_progress: OnProgress = quiet,
    **compute: Unpack[ComputeArgs],
) -> ScoreResult:
    """Label every file under ``dirs`` with a registered model, featurized with the model's own FeatureConfig.

    A file's p_male is calibrated with the model's calibration; below ``min_confidence`` its label is
    ``uncertain``. Every file gets a report row (``ok``, ``no_speech`` or ``error`` with the reason); a file never
    stops the batch. Raises ``corpus.CorpusError`` (a folder missing or unlistable),
    ``tracking.TrackingError`` (no such model, store unreachable, not a safe model), ``config.DeviceError``
    (``device`` cuda without CUDA), :class:`ModelError`, ``parallel.EngineError``. ``jobs``, ``backend``, ``scheduler``,
    ``device``: where files are read and the model runs (:class:`voiceclf.compute.Compute`).
    """
    from voiceclf import tracking  # MLflow; torch (~1.7 s of import) only once the workers are at work

    t0 = time.perf_counter()
    c = Compute(**compute)
    items, hidden = collect(dirs)
    tracking.connect(tracking_uri)
    model = _Model(model_uri or tracking.DEFAULT_MODEL_URI)
    try:  # from here on, the loading thread is waited for whatever happens: it must not outlive this call
        check_weights(model.cfg, f"{model.uri}: ")  # before any work
        dev = None
        if c.device not in ("auto", "cpu"):  # a device that may not be there is checked before any work (torch is imported for it)
            from voiceclf.model import pick_device

            dev = pick_device(c.device)
        t_loop = time.perf_counter()
        # every window of a long recording: its turns and seconds per sex cover all of its speech
        with featurized(items, model.cfg, jobs=c.jobs, backend=c.backend, scheduler=c.scheduler, max_windows=None) as stream:
            # The workers have their first batches: torch is imported while they work, not before they start.
            from voiceclf.model import pick_device

            dev = dev or pick_device(c.device)
            log.info("score: %d files in %s with %s (version %s, %s) on %s", len(items) + len(hidden), ", ".join(map(str, dirs)), model.uri,
                     model.version or "-", model.cfg.feature_set, dev)
            rows, segments, first = _score_stream(stream, hidden, model, dev, t0, total=len(items) + len(hidden), threshold=threshold, min_confidence=min_confidence,
                                                  on_progress=on_progress)
            model.ready(dev)  # a batch with no windows anywhere still has its model checked
    finally:
        model.close()
    from voiceclf.score import REPORT_COLUMNS, SEGMENT_COLUMNS

    return ScoreResult(
        report=pd.DataFrame(rows, columns=REPORT_COLUMNS).sort_values("path", kind="stable", ignore_index=True),
        segments=pd.DataFrame(segments, columns=SEGMENT_COLUMNS).sort_values(["path", "start_s"], kind="stable", ignore_index=True),
        model_uri=model.uri, model_version=model.version, device=str(dev), seconds=time.perf_counter() - t0,
        loop_seconds=time.perf_counter() - t_loop, first_scored_s=first,
    )


def _score_stream(stream, hidden: list[file_windows.Result], model: _Model, dev, t0: float, *, total: int, threshold: float, min_confidence: float,
                  on_progress: OnProgress) -> tuple[list[dict], list[dict], float | None]:
    """Report rows and segment rows of the hidden files, then of every batch the workers send (``total`` files in all);
    the seconds from ``t0`` to the first batch scored."""
    from voiceclf.calibration import IDENTITY
    from voiceclf.score import score_results

    def score(results):
        module = model.ready(dev) if any(r.n_windows for r in results) else None
        return score_results(results, module, threshold=threshold, model_uri=model.uri, model_version=model.version, window_s=model.cfg.window_s,
                             calibration=model.model.calibration if module is not None else IDENTITY, min_confidence=min_confidence)

    rows, segments, first, errors = score(hidden)[0], [], None, len(hidden)
    for res in hidden:
        log.warning("hidden: %s", res.message)
    on_progress(Progress("score", len(hidden), total, errors))
    for results in stream:
        r, s = score(results)
        for row in r:
            if row["status"] != "ok":
                log.warning("%s: %s", row["status"], row["error"])
        rows += r
        segments += s
        first = first or time.perf_counter() - t0
        errors += sum(x["status"] == "error" for x in r)
        on_progress(Progress("score", len(rows), total, errors))
    return rows, segments, first
