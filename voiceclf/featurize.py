"""Featurize: audio of one or more corpora → Parquet shards per feature set, incremental, every path accounted for.

Nothing here prints: progress goes to ``on_progress``, failures are the library's errors (jobs/ turn them into
exit codes).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Unpack

from voiceclf import corpus, file_windows, safeio, shards
from voiceclf.compute import WorkerArgs, Workers
from voiceclf.config import FeatureConfig
from voiceclf.extract import check_weights, featurized
from voiceclf.progress import OnProgress, Progress, quiet

log = logging.getLogger("voiceclf")




#: Augmented variants of each labelled file that the featurize job makes by default: the best setting in
#: ``make bench`` (bench/README.md). :func:`featurize_dir` itself makes none unless asked.
VARIANTS = 2


@dataclass
class FeaturizeSummary:
    """What one feature set's shard folder got from a :func:`featurize_dir` call."""

    feature_set: str
    out: Path
    files: int  # listed in the sources
    todo: int  # not in ``out`` before this call
    windows: int = 0
    errors: int = 0  # files (not variants) that gave no windows; their rows are in errors.csv
    duplicates: int = 0  # files whose content another listed path holds: a ``duplicate`` row each in errors.csv (not in ``errors``)
    label_conflicts: list[str] = field(default_factory=list)  # duplicates labelled otherwise than the path holding their content
    shards_written: int = 0
    seconds: float = 0.0
    reconciled: shards.Reconciled | None = None

    @property
    def files_per_s(self) -> float:
        return self.todo / max(self.seconds, 1e-9)


def listed_items(sources: Sequence[str | os.PathLike], allow_unlabelled: bool = False, allow_outside_paths: bool = False) -> list[file_windows.Item]:
    """Every file of every source as an Item; speaker ids are made unique across corpora."""
    items: list[file_windows.Item] = []
    for src in corpus.unique_sources(sources):
        df = corpus.discover(src, require_labels=not allow_unlabelled, allow_outside_paths=allow_outside_paths)
        for row in df.itertuples(index=False):
            # two corpora's "01" are two people
            speaker = f"{row.corpus}/{row.speaker}" if row.speaker else None
            items.append(file_windows.Item(path=row.path, source=row.source, corpus=row.corpus, speaker=speaker, label=row.label))
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
        raise safeio.OutputError(f"cannot create output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise safeio.OutputError(f"output folder {out} is not writable")


def featurize_dir(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    feature_sets: Sequence[str] = (FeatureConfig.feature_set,),
    *,
    variants: int = 0,
    shard_rows: int = 2048,
    wait: bool = False,
    allow_unlabelled: bool = False,
    allow_outside_paths: bool = False,
    on_progress: OnProgress = quiet,
    **workers: Unpack[WorkerArgs],
) -> list[FeaturizeSummary]:
    """Audio of ``sources`` → Parquet shards in ``out``, one summary per feature set.

    One feature set writes into ``out``; several write ``out/<set>/`` each. Incremental: files whose
    sha256 is in the folder already are skipped, after the folder's rows of these sources are
    reconciled with them (relabelled, moved and deleted files). Files are hashed here, once for all
    sets, only when a folder holds something to skip or reconcile; otherwise each worker hashes the bytes
    it decodes. Every file is accounted for: a row in the shards or in ``errors.csv``. ``jobs``, ``backend``,
    ``scheduler``: where the files are read (:class:`voiceclf.compute.Workers`).
    """
    w = Workers(**workers)
    items = _not_inside(listed_items(sources, allow_unlabelled, allow_outside_paths), Path(out))
    cfgs = [FeatureConfig.for_feature_set(fs) for fs in feature_sets]
    for cfg in cfgs:  # the speech detector and encoder these features name, checked before any work
        check_weights(cfg)
    out = Path(out)
    outs = [out] if len(cfgs) == 1 else [out / cfg.feature_set for cfg in cfgs]
    for o in outs:
        prepare_out(o)
    return [
        _featurize_set(items, cfg, o, variants=variants, shard_rows=shard_rows, jobs=w.jobs, backend=w.backend,
                       scheduler=w.scheduler, wait=wait, on_progress=on_progress)
        for cfg, o in zip(cfgs, outs)
    ]


def _not_inside(items: list[file_windows.Item], out: Path) -> list[file_windows.Item]:
    """The items that are not in the output folder: shards, errors.csv and the lock of an output inside a source are
    the job's own files, not recordings (a rerun would list them as not_audio rows)."""
    real_out = os.path.realpath(out)
    keep = [it for it in items if os.path.commonpath([real_out, os.path.realpath(os.fsdecode(it.on_disk))]) != real_out]
    if len(keep) < len(items):
        log.info("featurize: %d file(s) in the output folder %s itself are not featurized", len(items) - len(keep), out)
    return keep


def _hash_for_skipping(items: list[file_windows.Item], out: Path) -> None:
    """sha256 of every file not hashed yet, when ``out`` holds files to skip or reconcile (under its lock).

    A fresh folder has nothing to skip: the workers hash each file from the bytes they decode, instead of the
    parent reading every file once more before any work starts. Hashed once for all feature sets.
    """
    if not shards.part_paths(out) and not (out / shards.ERRORS).exists():
        return
    for it in items:
        if it.sha256 is None:
            try:
                it.sha256 = file_windows.sha256_file(it.on_disk)
            except OSError:
                pass  # unreadable, a broken link, a folder: the worker makes it an errors.csv row; a rerun tries again


#: errors.csv code of a path whose content another listed path holds (same sha256): its windows would train
#: twice, and under two labels when the copies disagree. The message names the path holding the rows.
DUPLICATE = "duplicate"
LABEL_CONFLICT = "one of the two labels is wrong"


class _Owners:
    """Which path holds the rows of each content (sha256): the shards' and errors.csv's first, then the first
    listed path met in this run, in item order. A resumed run thus makes the same choice as a clean one: shards
    hold files in item order."""

    def __init__(self, have: dict[tuple[str, str, str], str | None]) -> None:
        self.by_hash: dict[str, tuple[tuple[str, str, str], str | None]] = {}
        for key, label in have.items():
            if key[2]:
                self.by_hash.setdefault(key[2], (key, label))

    def twin(self, it: file_windows.Item) -> file_windows.Result | None:
        """A ``duplicate`` result for ``it`` when another path holds its content, else None (and ``it`` owns it)."""
        if not it.sha256:
            return None  # not read yet, or unreadable: nothing to compare
        key = (it.source, it.path, it.sha256)
        (osrc, opath, _), olabel = self.by_hash.setdefault(it.sha256, (key, it.label))
        if (osrc, opath) == key[:2]:
            return None
        other = opath if osrc == it.source else os.path.join(osrc, opath)
        msg = f"duplicate of {other} (same sha256 {it.sha256[:12]}…); its rows stand for both"
        if olabel is not None and it.label is not None and olabel != it.label:
            msg += f"; labelled {it.label} here but {olabel} there: {LABEL_CONFLICT}"
        return file_windows.Result(it, error=DUPLICATE, message=msg)

    def keep_first(self, results: list[file_windows.Result]) -> list[file_windows.Result]:
        """Results in item order, a later path of an earlier content (and its variants) turned into its duplicate row."""
        out, dropped = [], None
        for r in results:
            if r.item.variant:
                if (r.item.source, r.item.path) != dropped:
                    out.append(r)
                continue
            twin = self.twin(r.item)
            dropped = (r.item.source, r.item.path) if twin else None
            out.append(twin or r)
        return out


def _count_duplicates(results: list[file_windows.Result], summary: "FeaturizeSummary") -> None:
    for r in results:
        if r.error == DUPLICATE:
            summary.duplicates += 1
            if LABEL_CONFLICT in r.message:
                summary.label_conflicts.append(f"{r.item.path}: {r.message}")


def _add_duplicates(out: Path, twins: list[file_windows.Result], summary: "FeaturizeSummary", known: set[tuple[str, str, str]]) -> None:
    """errors.csv rows for paths whose content is in ``out`` already under another path; the summary counts the new ones."""
    shards.append_errors(out, [dict(path=r.item.path, error=r.error, message=r.message, source=r.item.source, sha256=r.item.sha256)
                               for r in twins])
    _count_duplicates([r for r in twins if (r.item.source, r.item.path, r.item.sha256) not in known], summary)


def _featurize_set(items: list[file_windows.Item], cfg: FeatureConfig, out: Path, *, variants: int, shard_rows: int, jobs: int,
                   backend: str, scheduler: str | None, wait: bool, on_progress: OnProgress) -> FeaturizeSummary:
    """One feature set of the items into one shard folder: incremental, locked, every file accounted for."""
    with safeio.lock(out, wait=wait):
        shards.verify(out)  # a damaged shard's files would count as done, its bad values trained on
        try:
            existing = shards.dir_config(out)
        except ValueError as e:  # ShardError, ConfigError
            raise safeio.OutputError(f"{out}: {e}") from None
        if existing is not None and existing != cfg:
            raise safeio.OutputError(f"{out} holds features made with another config ({existing.feature_set}); use another output folder")
        _hash_for_skipping(items, out)
        changed = shards.reconcile(out, items)
        known_twins = shards.pop_errors(out, DUPLICATE, {it.source for it in items})  # derived again below
        have = shards.accounted(out)
        owners = _Owners(have)
        todo, twins = [], []
        for it in items:
            if it.sha256 is not None and (it.source, it.path, it.sha256) in have:
                continue  # this path with this content is in the shards or errors.csv
            if (twin := owners.twin(it)) is not None:
                twins.append(twin)  # content featurized already under another path: a row naming it, no work
            else:
                todo.append(it)
        summary = FeaturizeSummary(cfg.feature_set, out, len(items), len(todo), reconciled=changed or None)
        new_twins = sum((r.item.source, r.item.path, r.item.sha256) not in known_twins for r in twins)
        log.info("featurize %s: %d files, %d already in %s, %d to do", cfg.feature_set, len(items), len(items) - len(todo) - new_twins, out, len(todo))
        if twins:
            _add_duplicates(out, twins, summary, known_twins)
        if not todo:
            return summary
        stage = f"featurize {cfg.feature_set}"
        writer = shards.ShardWriter(out, cfg, shard_rows)
        t0, finished, n = time.perf_counter(), False, 0
        on_progress(Progress(stage, 0, len(todo)))
        try:
            with featurized(todo, cfg, jobs=jobs, backend=backend, scheduler=scheduler, variants=variants) as stream:
                for results in stream:
                    results = owners.keep_first(results)  # two listed paths of one content: the first in order gets the rows
                    for r in results:
                        writer.add(r)
                        summary.windows += r.n_windows
                    _count_duplicates(results, summary)
                    originals = [r for r in results if r.item.variant == 0 and r.error != DUPLICATE]
                    for r in originals:
                        if r.error:
                            log.warning("%s: %s", r.error, r.message)
                    n += sum(r.item.variant == 0 for r in results)
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

