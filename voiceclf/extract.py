"""The parallel files → windows stream that featurize and score share, after the pinned weights it needs are checked."""
from __future__ import annotations

import contextlib
import dataclasses
import os

from voiceclf import file_windows, parallel, pinned, streaming, vad
from voiceclf.config import FeatureConfig


class ModelError(RuntimeError):
    """Pretrained weights or a model that cannot be used here: another speech detector or encoder than the
    FeatureConfig names, or a model that does not run on the device."""

    missing: str | None = None  # "weights" when the detector or encoder is not installed (as the error it wraps says)


def check_weights(cfg: FeatureConfig, where: str = "") -> None:
    """The speech detector and speaker encoder ``cfg`` names are installed, with the same sha256."""
    try:
        vad.check(cfg)
        if cfg.is_embedding:
            from voiceclf import embedding

            embedding.check(cfg.encoder_sha256)
    except pinned.WeightsError as e:  # vad.VadError, embedding.EncoderError, pinned.WeightsMissing
        err = ModelError(f"{where}{e}")
        err.missing = getattr(e, "missing", None)
        raise err from None


@contextlib.contextmanager
def featurized(items: list[file_windows.Item], cfg: FeatureConfig, *, jobs: int, backend: str, scheduler: str | None, variants: int = 0,
                max_windows: int | None = streaming.MAX_WINDOWS):
    """The workers' results for ``items``, a batch at a time, in order: the one loop featurize and score share.

    Speaker-embedding workers start with the encoder's module loaded (``parallel.WORKER_PRELOAD``). Workers get
    absolute paths: loky reuses them across calls, and a program may have changed its folder since they
    started. The results carry the items as given (a relative source stays relative in shards and reports).
    """
    given = iter(items)

    def as_given(results: list[file_windows.Result]) -> list[file_windows.Result]:
        for r in results:  # in item order, each item's recording (variant 0) first, then its variants
            if r.item.variant == 0:
                it = next(given)
            r.item = dataclasses.replace(it, sha256=r.item.sha256, variant=r.item.variant)
        return results

    sent = [dataclasses.replace(it, source=os.path.abspath(it.source)) for it in items]
    with parallel.engine(backend, scheduler, preload=parallel.WORKER_PRELOAD[cfg.family]):
        yield (as_given(res) for res in parallel.imap(file_windows.featurize_batch, file_windows.batches(sent, jobs), n_jobs=jobs, cfg=cfg, variants=variants, max_windows=max_windows))

