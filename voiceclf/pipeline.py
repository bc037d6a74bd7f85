"""The jobs as functions: what ``featurize`` does, callable from a job, the demo, the benchmark or a test.

A pipeline function takes plain values, reports progress through ``on_progress`` and raises the
library's own errors (:class:`corpus.CorpusError`, :class:`shards.ShardError`, :class:`io.LockedError`,
:class:`OutputError`, ...). Turning those into exit codes, progress bars and one-line messages is the
jobs' business (``jobs/``), so nothing here prints.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from voiceclf import batch, corpus, embedding, io, parallel, shards, vad
from voiceclf.config import FeatureConfig

log = logging.getLogger("voiceclf")


class OutputError(ValueError):
    """An output folder cannot be used: not creatable, not writable, or holding other features."""


@dataclass(frozen=True)
class Progress:
    """One progress event: ``done`` of ``total`` units of ``stage`` finished, ``errors`` of them failed."""

    stage: str
    done: int
    total: int
    errors: int = 0
    unit: str = "files"


OnProgress = Callable[[Progress], None]


def _quiet(_: Progress) -> None:
    pass


# ----------------------------------------------------------------------------- featurize
@dataclass
class FeaturizeSummary:
    """What one feature set's shard folder got from a :func:`featurize_dir` call."""

    feature_set: str
    out: Path
    files: int  # listed in the sources
    todo: int  # not in ``out`` before this call
    windows: int = 0
    errors: int = 0  # files (not variants) that gave no windows; their rows are in errors.csv
    shards_written: int = 0
    seconds: float = 0.0
    reconciled: shards.Reconciled | None = None

    @property
    def files_per_s(self) -> float:
        return self.todo / max(self.seconds, 1e-9)


def discover(sources: Sequence[str | os.PathLike], allow_unlabelled: bool = False, allow_outside_paths: bool = False) -> list[batch.Item]:
    """Every file of every source as an Item; speaker ids are made unique across corpora."""
    items: list[batch.Item] = []
    for src in sources:
        df = corpus.discover(src, require_labels=not allow_unlabelled, allow_outside_paths=allow_outside_paths)
        for row in df.itertuples(index=False):
            # two corpora's "01" are two people
            speaker = f"{row.corpus}/{row.speaker}" if row.speaker else None
            items.append(batch.Item(path=row.path, source=row.source, corpus=row.corpus, speaker=speaker, label=row.label))
    folders: dict[str, set] = {}
    for it in items:
        folders.setdefault(it.corpus, set()).add(it.source)
    for name, where in folders.items():
        if len(where) > 1:
            log.warning("corpus %r comes from %d folders (%s): equal speaker ids in them are taken as one person; "
                        "give a manifest a corpus column to tell them apart", name, len(where), ", ".join(sorted(where)))
    return items


def prepare_out(out: Path) -> None:
    """Create ``out`` if needed; refuse one that cannot be written, before any work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {out} is not writable")


def featurize_dir(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    feature_sets: Sequence[str] = (FeatureConfig.feature_set,),
    *,
    augment: int = 0,
    shard_rows: int = 2048,
    jobs: int = -1,
    backend: str = "loky",
    scheduler: str | None = None,
    wait: bool = False,
    allow_unlabelled: bool = False,
    allow_outside_paths: bool = False,
    on_progress: OnProgress = _quiet,
) -> list[FeaturizeSummary]:
    """Audio of ``sources`` → Parquet shards in ``out``, one summary per feature set.

    One feature set writes into ``out``; several write ``out/<set>/`` each. Incremental: files whose
    sha256 is in the folder already are skipped, after the folder's rows of these sources are
    reconciled with them (relabelled, moved and deleted files). Files are hashed here, once for all
    sets, only when a folder holds something to skip or reconcile; otherwise each worker hashes the bytes
    it decodes. Every file is accounted for: a row in the shards or in ``errors.csv``.
    """
    items = discover(sources, allow_unlabelled, allow_outside_paths)
    cfgs = [FeatureConfig.for_feature_set(fs) for fs in feature_sets]
    for cfg in cfgs:  # the speech detector and encoder these features name, checked before any work
        vad.check(cfg)
        if cfg.is_embedding:
            embedding.load_encoder(cfg.encoder_sha256)
    out = Path(out)
    outs = [out] if len(cfgs) == 1 else [out / cfg.feature_set for cfg in cfgs]
    for o in outs:
        prepare_out(o)
    return [
        _featurize_set(items, cfg, o, augment=augment, shard_rows=shard_rows, jobs=jobs, backend=backend,
                       scheduler=scheduler, wait=wait, on_progress=on_progress)
        for cfg, o in zip(cfgs, outs)
    ]


def _hash_for_skipping(items: list[batch.Item], out: Path) -> None:
    """sha256 of every file not hashed yet, when ``out`` holds files to skip or reconcile (under its lock).

    A fresh folder has nothing to skip: the workers hash each file from the bytes they decode, instead of the
    parent reading every file once more before any work starts. Hashed once for all feature sets.
    """
    if not shards.part_paths(out) and not (out / shards.ERRORS).exists():
        return
    for it in items:
        if it.sha256 is None:
            try:
                it.sha256 = batch.sha256_file(it.abspath)
            except OSError:
                pass  # unreadable, a broken link, a folder: the worker makes it an errors.csv row; a rerun tries again


def _featurize_set(items: list[batch.Item], cfg: FeatureConfig, out: Path, *, augment: int, shard_rows: int, jobs: int,
                   backend: str, scheduler: str | None, wait: bool, on_progress: OnProgress) -> FeaturizeSummary:
    """One feature set of the items into one shard folder: incremental, locked, every file accounted for."""
    with io.lock(out, wait=wait):
        shards.verify(out)  # a damaged shard's files would count as done, its bad values trained on
        try:
            existing = shards.dir_config(out)
        except ValueError as e:  # ShardError, ConfigError
            raise OutputError(f"{out}: {e}") from None
        if existing is not None and existing != cfg:
            raise OutputError(f"{out} holds features made with another config ({existing.feature_set}); use another output folder")
        _hash_for_skipping(items, out)
        changed = shards.reconcile(out, items)
        done = shards.done_hashes(out)
        todo = [it for it in items if it.sha256 not in done]
        summary = FeaturizeSummary(cfg.feature_set, out, len(items), len(todo), reconciled=changed or None)
        log.info("featurize %s: %d files, %d already in %s, %d to do", cfg.feature_set, len(items), len(items) - len(todo), out, len(todo))
        if not todo:
            return summary
        stage = f"featurize {cfg.feature_set}"
        writer = shards.ShardWriter(out, cfg, shard_rows)
        t0, finished, n = time.perf_counter(), False, 0
        on_progress(Progress(stage, 0, len(todo)))
        try:
            with parallel.engine(backend, scheduler):
                for results in parallel.imap(batch.featurize_batch, batch.batches(todo, jobs), n_jobs=jobs, cfg=cfg, augment=augment):
                    for r in results:
                        writer.add(r)
                        summary.windows += r.n_windows
                    originals = [r for r in results if r.item.augment == 0]
                    for r in originals:
                        if r.error:
                            log.warning("%s: %s", r.error, r.message)
                    n += len(originals)
                    summary.errors += sum(r.error is not None for r in originals)
                    on_progress(Progress(stage, n, len(todo), summary.errors))
            finished = True
        finally:
            # Shards hold whole files only, so flushing what is complete is safe even when interrupted:
            # a rerun skips those files and does the rest. Interrupted, the last file's variants may
            # still have been coming: it is left out and done again.
            writer.flush(whole_files_only=not finished)
            summary.shards_written = len(writer.written)
            summary.seconds = time.perf_counter() - t0
        return summary
