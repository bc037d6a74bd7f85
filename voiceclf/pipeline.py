"""The jobs as functions: what ``featurize`` does, callable from a job, the demo, the benchmark or a test.

A pipeline function takes plain values, reports progress through ``on_progress`` and raises the
library's own errors (:class:`corpus.CorpusError`, :class:`shards.ShardError`, :class:`io.LockedError`,
:class:`OutputError`, ...). Turning those into exit codes, progress bars and one-line messages is the
jobs' business (``jobs/``), so nothing here prints.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd

from voiceclf import batch, corpus, io, longfile, parallel, shards, vad
from voiceclf.config import LABELS, FeatureConfig

# torch and MLflow take seconds to import and featurize needs neither (nor does a CNN featurize worker):
# the modules that bring them in (embedding, score, tracking, train) are imported where they are used.
if TYPE_CHECKING:
    from voiceclf import tracking
    from voiceclf import train as tr

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
    note: str = ""  # what is happening now, e.g. the epoch of a training


OnProgress = Callable[[Progress], None]

#: Augmented variants of each labelled file that the featurize job makes by default: the best setting in
#: ``make bench`` (bench/README.md). :func:`featurize_dir` itself makes none unless asked.
VARIANTS = 2


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
    duplicates: int = 0  # files whose content another listed path holds: a ``duplicate`` row each in errors.csv (not in ``errors``)
    label_conflicts: list[str] = field(default_factory=list)  # duplicates labelled otherwise than the path holding their content
    shards_written: int = 0
    seconds: float = 0.0
    reconciled: shards.Reconciled | None = None

    @property
    def files_per_s(self) -> float:
        return self.todo / max(self.seconds, 1e-9)


def discover(sources: Sequence[str | os.PathLike], allow_unlabelled: bool = False, allow_outside_paths: bool = False) -> list[batch.Item]:
    """Every file of every source as an Item; speaker ids are made unique across corpora."""
    items: list[batch.Item] = []
    for src in corpus.unique_sources(sources):
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


class ModelError(RuntimeError):
    """Pretrained weights or a model that cannot be used here: another speech detector or encoder than the
    FeatureConfig names, or a model that does not run on the device."""

    missing: str | None = None  # "weights" when the detector or encoder is not installed (as the error it wraps says)


def _check_weights(cfg: FeatureConfig, where: str = "") -> None:
    """The speech detector and speaker encoder ``cfg`` names are installed, with the same sha256."""
    try:
        vad.check(cfg)
        if cfg.is_embedding:
            from voiceclf import embedding

            embedding.check(cfg.encoder_sha256)
    except RuntimeError as e:  # vad.VadError, embedding.EncoderError
        err = ModelError(f"{where}{e}")
        err.missing = getattr(e, "missing", None)
        raise err from None


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
    variants: int = 0,
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
    items = _not_inside(discover(sources, allow_unlabelled, allow_outside_paths), Path(out))
    cfgs = [FeatureConfig.for_feature_set(fs) for fs in feature_sets]
    for cfg in cfgs:  # the speech detector and encoder these features name, checked before any work
        _check_weights(cfg)
    out = Path(out)
    outs = [out] if len(cfgs) == 1 else [out / cfg.feature_set for cfg in cfgs]
    for o in outs:
        prepare_out(o)
    return [
        _featurize_set(items, cfg, o, variants=variants, shard_rows=shard_rows, jobs=jobs, backend=backend,
                       scheduler=scheduler, wait=wait, on_progress=on_progress)
        for cfg, o in zip(cfgs, outs)
    ]


def _not_inside(items: list[batch.Item], out: Path) -> list[batch.Item]:
    """The items that are not in the output folder: shards, errors.csv and the lock of an output inside a source are
    the job's own files, not recordings (a rerun would list them as not_audio rows)."""
    real_out = os.path.realpath(out)
    keep = [it for it in items if os.path.commonpath([real_out, os.path.realpath(os.fsdecode(it.on_disk))]) != real_out]
    if len(keep) < len(items):
        log.info("featurize: %d file(s) in the output folder %s itself are not featurized", len(items) - len(keep), out)
    return keep


@contextlib.contextmanager
def _featurized(items: list[batch.Item], cfg: FeatureConfig, *, jobs: int, backend: str, scheduler: str | None, variants: int = 0,
                max_windows: int | None = longfile.MAX_WINDOWS):
    """The workers' results for ``items``, a batch at a time, in order: the one loop featurize and score share.

    Speaker-embedding workers start with the encoder's module loaded (``parallel.WORKER_PRELOAD``). Workers get
    absolute paths: loky reuses them across calls, and a program may have changed its folder since they
    started. The results carry the items as given (a relative source stays relative in shards and reports).
    """
    given = iter(items)

    def as_given(results: list[batch.Result]) -> list[batch.Result]:
        for r in results:  # in item order, each item's recording (variant 0) first, then its variants
            if r.item.variant == 0:
                it = next(given)
            r.item = dataclasses.replace(it, sha256=r.item.sha256, variant=r.item.variant)
        return results

    sent = [dataclasses.replace(it, source=os.path.abspath(it.source)) for it in items]
    with parallel.engine(backend, scheduler, preload=parallel.WORKER_PRELOAD[cfg.family]):
        yield (as_given(res) for res in parallel.imap(batch.featurize_batch, batch.batches(sent, jobs), n_jobs=jobs, cfg=cfg, variants=variants, max_windows=max_windows))


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
                it.sha256 = batch.sha256_file(it.on_disk)
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

    def twin(self, it: batch.Item) -> batch.Result | None:
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
        return batch.Result(it, error=DUPLICATE, message=msg)

    def keep_first(self, results: list[batch.Result]) -> list[batch.Result]:
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


def _count_duplicates(results: list[batch.Result], summary: "FeaturizeSummary") -> None:
    for r in results:
        if r.error == DUPLICATE:
            summary.duplicates += 1
            if LABEL_CONFLICT in r.message:
                summary.label_conflicts.append(f"{r.item.path}: {r.message}")


def _add_duplicates(out: Path, twins: list[batch.Result], summary: "FeaturizeSummary", known: set[tuple[str, str, str]]) -> None:
    """errors.csv rows for paths whose content is in ``out`` already under another path; the summary counts the new ones."""
    shards.append_errors(out, [dict(path=r.item.path, error=r.error, message=r.message, source=r.item.source, sha256=r.item.sha256)
                               for r in twins])
    _count_duplicates([r for r in twins if (r.item.source, r.item.path, r.item.sha256) not in known], summary)


def _featurize_set(items: list[batch.Item], cfg: FeatureConfig, out: Path, *, variants: int, shard_rows: int, jobs: int,
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
            with _featurized(todo, cfg, jobs=jobs, backend=backend, scheduler=scheduler, variants=variants) as stream:
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


# ----------------------------------------------------------------------------- train
class GridError(ValueError):
    """A grid (file or values) that cannot be searched."""


class TrainError(RuntimeError):
    """Training gave nothing to register: every grid point failed."""


@dataclass
class TrainSummary:
    """What a :func:`train_grid` call did: the grid table (one row per point), the winner, its registration."""

    table: pd.DataFrame
    winner: tr.PointResult
    winner_run_id: str
    tracking_uri: str
    version: int | None = None  # None: not registered
    promoted: bool = False
    reason: str = ""


def read_grid(path: str | os.PathLike, overrides: dict[str, list] | None = None) -> dict[str, dict[str, list]]:
    """Family → {hyperparameter: values} from a TOML grid file (one table per family), ``overrides`` on top of every family."""
    from voiceclf import train as tr

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise GridError(f"grid file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise GridError(f"grid file {path}: {e}") from None
    unknown = set(raw) - set(tr.FAMILIES)
    if unknown:
        raise GridError(f"grid file {path}: unknown table(s) {sorted(unknown)}; expected [cnn] and/or [embedding_head]")
    grids = {}
    for family in tr.FAMILIES:
        values = {**raw.get(family, {}), **(overrides or {})}
        for key, v in values.items():
            if key not in tr.GRID_KEYS:
                raise GridError(f"grid file {path}: [{family}] {key} is not a hyperparameter; expected some of {sorted(tr.GRID_KEYS)}")
            if not isinstance(v, list):
                values[key] = [v]
            elif not v:
                raise GridError(f"grid: [{family}] {key} must be a non-empty list")
        grids[family] = values
    return grids


def feature_dirs(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """The shard folders: each given folder, or its sub-folders that hold shards (featurize of several sets)."""
    from voiceclf import train as tr

    out = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise tr.DataError(f"feature folder {d} does not exist (featurize first)")
        if shards.part_paths(d):
            out.append(d)
            continue
        subs = sorted(s for s in d.iterdir() if s.is_dir() and shards.part_paths(s))
        if not subs:
            raise tr.DataError(f"feature folder {d} holds no shards (featurize first)")
        out += subs
    return out


def load_data(dirs: Sequence[str | os.PathLike]) -> tuple[dict[str, tr.Data], dict[str, list[Path]]]:
    """One Data per feature set (directories of one set are concatenated), and the directories of each set."""
    from voiceclf import train as tr

    groups: dict = {}
    for d in feature_dirs(dirs):
        groups.setdefault(shards.dir_config(d), []).append(d.resolve())
    by_set, dirs_of = {}, {}
    for cfg, ds in groups.items():
        if cfg.feature_set in by_set:
            raise tr.DataError(f"{', '.join(map(str, ds))}: two different configs of feature set {cfg.feature_set}; pass folders of one config per set")
        rows, x, cfg = shards.read(ds)
        by_set[cfg.feature_set] = tr.Data.from_shards(rows, x, cfg)
        dirs_of[cfg.feature_set] = ds
    return by_set, dirs_of


def dataset_profiles(data: tr.Data, split: dict) -> dict[str, dict]:
    """Per split (as MLflow dataset contexts): ``profile`` (what the UI's Dataset drawer shows: speakers, recordings
    and hours of speech in all and per corpus and sex) and ``tags`` (the same counts as numbers, one tag each)."""
    from voiceclf import train as tr

    out = {}
    for s, ctx in (("train", "training"), ("val", "validation"), ("test", "test")):
        part = tr.parts_of(data, split)[s]
        real = part.variant == 0
        windows = pd.DataFrame({"file": part.file, "speaker": part.speaker, "corpus": part.corpus, "sex": [LABELS[v] for v in part.y],
                                "speech_s": part.speech_s if part.speech_s is not None else np.nan})[real]
        tags = {"windows": int(len(part.y)), "speakers_digest": hashlib.sha256("\n".join(split[s]).encode()).hexdigest()[:16]}

        def counts(g: pd.DataFrame) -> dict:
            return {"speakers": int(g["speaker"].nunique()), "recordings": int(g["file"].nunique()),
                    **({} if part.speech_s is None else {"hours": round(float(g["speech_s"].sum()) / 3600, 3)})}

        profile = {**counts(windows), "windows": int(len(part.y)), "augmented_windows": int((~real).sum())}
        for (c, sex), g in windows.groupby(["corpus", "sex"]):
            n = counts(g)
            tags.update({f"{c}.{sex}.{k}": v for k, v in n.items()})
            profile[f"{c} {sex}"] = " · ".join(f"{v} {'h' if k == 'hours' else k}" for k, v in n.items())
        out[ctx] = {"profile": profile, "tags": tags}
    return out


def all_speakers(data: dict[str, tr.Data]) -> pd.DataFrame:
    """Every speaker of every feature set once: the split is the same for all families."""
    spk = pd.concat([d.speakers() for d in data.values()], ignore_index=True).drop_duplicates("speaker")
    return spk.sort_values("speaker", ignore_index=True)


def run_task(task: tuple, points: list[tr.GridPoint], data: dict, seed: int, threads: int, device: str, epochs=None) -> tr.PointResult:
    """One training of a grid point (in a worker): on the split, or on a cross-corpus validation split.
    ``epochs``: a queue for each epoch's end (``relay.epochs_reported``), or None."""
    from voiceclf import relay
    from voiceclf import train as tr

    i, left_out, split = task
    pt = points[i]
    on_epoch = (lambda e, row: relay.put_quietly(epochs, relay.epoch_note(pt.name, left_out, e, pt.epochs, row))) if epochs is not None else None
    return tr.train_point(pt, data[pt.feature_set], split, seed=seed, threads=threads, device=device, on_epoch=on_epoch)


def champion_test_score(current: tracking.LoadedModel, data: dict[str, tr.Data], split: dict) -> float:
    """The current champion's test_score on this run's held-out speakers.

    Its own feature config decides its input: the windows of a matching feature set when this
    run has them, else the held-out files featurized again with its config.
    """
    from voiceclf import tracking
    from voiceclf import train as tr
    from voiceclf.score import p_male

    from voiceclf.calibration import recalibrated

    held_out = {s: tr.parts_of(d, split)["test"] for s, d in data.items()}
    match = [s for s, d in data.items() if d.cfg == current.cfg]
    if match:
        te = held_out[match[0]]
        return tr.evaluate(recalibrated(tr.file_level(p_male(current.module, te.x), te), current.calibration), "test")["test_score"]
    te = next(iter(held_out.values()))
    files = pd.DataFrame({"file": te.file, "speaker": te.speaker, "corpus": te.corpus, "y": te.y}).drop_duplicates("file")
    items = [batch.Item(path=os.path.basename(f), source=os.path.dirname(f), corpus=c, speaker=s, label=LABELS[y])
             for f, s, c, y in files[["file", "speaker", "corpus", "y"]].itertuples(index=False)]
    results = [r for r in batch.featurize_batch(items, current.cfg) if r.n_windows]
    if not results:
        raise tracking.TrackingError("none of the held-out files gave windows with the champion's feature config")
    x = np.concatenate([r.windows.features for r in results])
    rep = lambda v: np.repeat(np.asarray(v, dtype=object), [r.n_windows for r in results])  # noqa: E731
    rows = pd.DataFrame({"source": rep([r.item.source for r in results]), "path": rep([r.item.path for r in results]),
                         "corpus": rep([r.item.corpus for r in results]), "speaker": rep([r.item.speaker for r in results]),
                         "label": rep([r.item.label for r in results]), "variant": 0})
    te = tr.Data.from_shards(rows, x, current.cfg)
    return tr.evaluate(recalibrated(tr.file_level(p_male(current.module, te.x), te), current.calibration), "test")["test_score"]


def decide_promotion(winner: tr.PointResult, data: dict, split: dict, force: bool, model_name: str = "voiceclf") -> tuple[bool, str]:
    """Promote only a winner at least as good as the current champion of ``model_name`` on the same held-out speakers."""
    from voiceclf import tracking

    new = winner.test["test_score"]
    try:
        current = tracking.load(tracking.champion_uri(model_name))
    except tracking.NoChampion:
        return True, "first champion"
    except tracking.TrackingError as e:
        return True, f"the current champion cannot be loaded ({e}); replaced"
    try:
        old = champion_test_score(current, data, split)
    except Exception as e:  # the old model may expect another input; it cannot then be compared, and must not block training
        return True, f"the current champion (version {current.version}) could not be evaluated on these speakers ({type(e).__name__}: {e}); replaced"
    verdict = f"test_score {new:.4f} vs the current champion (version {current.version}) {old:.4f} on the same held-out speakers"
    if new >= old - 1e-9:
        return True, verdict
    if force:
        return True, verdict + "; promoted anyway (forced)"
    return False, verdict + "; not promoted"


def point_metrics(res: tr.PointResult) -> dict[str, float]:
    """A grid point's summary metrics, one value each: what its run logs at step 0, and its parent when it wins."""
    # the per-epoch val_* curves end at the last epoch; best_val_* are the kept epoch's, the figures the grid compares
    return {**res.test, **res.xval, **{f"best_{k}": v for k, v in res.val.items()}, "best_epoch": res.best_epoch, "train_seconds": res.seconds}


#: Short family names for run names: the UI's run table cuts names at ~16 characters.
FAMILY_SHORT = {"cnn": "cnn", "embedding_head": "head"}


def run_names(points: Sequence[tr.GridPoint]) -> list[str]:
    """Names for the grid points' runs that tell them apart at the width of the UI's run table: the family first,
    then only what varies within it (the feature set if it has several, then each hyperparameter whose values
    differ), e.g. ``cnn``, ``head hidden=0``, ``head hidden=64``. Names that would still be equal get ``#2``..."""
    fields = [f.name for f in dataclasses.fields(points[0])] if points else []
    names = []
    for pt in points:
        kin = [q for q in points if q.family == pt.family]
        varied = [k for k in fields if len({getattr(q, k) for q in kin}) > 1]
        parts = [FAMILY_SHORT.get(pt.family, pt.family)]
        parts += [f"{getattr(pt, k)}" if k == "feature_set" else f"{k}={getattr(pt, k):g}" if isinstance(getattr(pt, k), float)
                  else f"{k}={getattr(pt, k)}" for k in varied]
        names.append(" ".join(parts))
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n} #{seen[n]}"
    return names


def winner_reason(winner: tr.PointResult, results: Sequence[tr.PointResult | None]) -> str:
    """The winning run's ``winner`` tag: a star (what the narrow tag column shows first), then what ranked it and by
    how much, e.g. ``★ xval_score 0.9812 (best of 3; next 0.9755)``."""
    key = "xval_score" if "xval_score" in winner.xval else "val_score"
    others = sorted((r.selection_score for r in results if r is not None and r is not winner and r.error is None and r.history), reverse=True)
    ok = 1 + len(others)
    return f"★ {key} {winner.selection_score:.4f} (best of {ok}" + (f"; next {others[0]:.4f})" if others else ")")


def grid_run_name(corpora: Sequence[str], n_points: int, label: str = "", when: float | None = None) -> str:
    """The parent run's name: ``[label ]MM-DD HH:MM corpus+corpus · N pts`` (local time), so two grids, and the
    demo's synthetic one, are told apart in the run table, which shows its first ~16 characters (the year is in
    the Created column's tooltip)."""
    stamp = time.strftime("%m-%d %H:%M", time.localtime(when))
    return f"{label + ' ' if label else ''}{stamp} {'+'.join(corpora)} · {n_points} pt{'s' if n_points != 1 else ''}"


def calibrate_point(main: tr.PointResult, held_out: dict[str, tr.PointResult]) -> None:
    """Fit the calibration ``main``'s model will carry on the predictions for corpora left out of training
    (``held_out``: the point trained without each corpus), else on its validation speakers; its test metrics
    become those of the calibrated p (what score reports), with ``test_ece``/``xval_ece`` beside them."""
    from voiceclf import calibration
    from voiceclf import train as tr

    raw = main.test_files
    cal, m = calibration.fit_for_point({c: r.test_files for c, r in held_out.items()}, main.val_files, raw)
    main.calibration = cal
    tr.set_test(main, calibration.recalibrated(raw, cal))
    main.test_files_raw = raw
    main.test.update({k: v for k, v in m.items() if not k.startswith("xval_")})
    main.xval = {**tr.cross_corpus_score(held_out), **{k: v for k, v in m.items() if k.startswith("xval_")}}


def log_point(runs: tracking.GridRuns, run_id: str, res: tr.PointResult, data: tr.Data, split: dict) -> str:
    from voiceclf import figures

    raw = res.test_files if res.test_files_raw is None else res.test_files_raw
    artifacts = {
        "curves.png": figures.curves_figure(res.history, res.point.name, res.best_epoch),
        "confusion_matrix.png": figures.confusion_figure(res.confusion, f"test (held-out speakers), files\n{res.point.name}"),
        "reliability.png": figures.reliability_figure(raw["p"].to_numpy(), res.test_files["p"].to_numpy(), raw["y"].to_numpy(),
                                                      f"test (held-out speakers), files\n{res.point.name}"),
        "calibration.json": res.calibration.to_dict() if res.calibration else {},
        "split.json": split,
        "per_speaker.csv": res.per_speaker,
    }
    return runs.log_point(run_id, res.history, point_metrics(res), artifacts=artifacts, model=res.model, cfg=data.cfg, input_example=np.array(data.x[:2]),
                          calibration=res.calibration.to_dict() if res.calibration else None)


def summary(points, run_ids, results, winner, corpora) -> pd.DataFrame:
    rows = []
    for pt, rid, res in zip(points, run_ids, results):
        f = res.final
        row = {"winner": "*" if res is winner else "", "point": pt.name, "run_id": rid, "status": "FAILED" if res.error else "ok",
               "epoch": res.best_epoch or None, "xval_score": res.xval.get("xval_score"), "val_score": f.get("val_score"),
               "test_score": res.test.get("test_score")}
        row.update({f"test.{c}": res.test.get(f"test_speaker_bacc.{c}") for c in corpora})
        row["seconds"] = round(res.seconds, 1)
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.4f}" if isinstance(v, float) else str(v))


def grid_markdown(table: pd.DataFrame, corpora: list[str], holdout: str | None, xval: bool) -> str:
    """The parent run's description: the grid as a Markdown table, winner marked."""
    cols = [c for c in table.columns if c != "run_id"]
    lines = [f"Grid over {', '.join(sorted({p.split()[0] for p in table['point']}))} on {', '.join(corpora)}"
             + (f"; test = held-out corpus **{holdout}**" if holdout else "") + ". Points ranked by "
             + ("`xval_score` (each training corpus left out in turn)." if xval else "`val_score` (one training corpus)."), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table[cols].itertuples(index=False):
        lines.append("| " + " | ".join(("**★**" if v == "*" else _fmt(v)) for v in row) + " |")
    return "\n".join(lines)


def version_markdown(winner: tr.PointResult, corpora: list[str], reason: str, xval: bool) -> str:
    """The model version's description: what it is, how it was chosen, its held-out figures per corpus."""
    t = winner.test
    per = ", ".join(f"{c} {t[f'test_speaker_bacc.{c}']:.3f}" for c in corpora if f"test_speaker_bacc.{c}" in t)
    return (f"**{winner.point.family}** on `{winner.point.feature_set}` ({winner.point.name}, epoch {winner.best_epoch}). "
            f"Chosen by {'`xval_score` ' + format(winner.xval.get('xval_score', float('nan')), '.3f') + ' (corpora left out in turn)' if xval else '`val_score` ' + format(winner.final['val_score'], '.3f')}. "
            f"Held-out speakers: test_score {t['test_score']:.3f} (speaker-balanced; per corpus: {per}); file balanced accuracy {t['test_balanced_acc']:.3f}. "
            f"Promotion: {reason}.")


def train_grid(
    features: Sequence[str | os.PathLike],
    grids: dict[str, dict[str, list]],
    *,
    holdout_corpus: str | None = None,
    experiment: str = "voiceclf",
    model_name: str = "voiceclf",
    run_label: str = "",
    tracking_uri: str | None = None,
    seed: int = 0,
    jobs: int = -1,
    device: str = "auto",
    backend: str = "loky",
    scheduler: str | None = None,
    system_metrics: bool = True,
    register: bool = True,
    force_promote: bool = False,
    on_progress: OnProgress = _quiet,
) -> TrainSummary:
    """Grid search over the model families of the feature sets in ``features``; every point an MLflow run.

    The split is by speaker (stratified by corpus and sex; ``holdout_corpus`` tests on one corpus and
    trains on the others). With two or more training corpora every point is trained again without each
    of them in turn and scored on it; the mean (``xval_score``) ranks the points, else ``val_score`` does.
    The winner is registered (as ``model_name``) and becomes the champion only if it is at least as good as the
    current one on the same held-out speakers (or ``force_promote``). ``run_label`` starts the parent run's name
    (the demo's ``demo``); the rest of it is the date, the corpora and the number of points. Raises :class:`GridError`, ``config.DataError``,
    ``shards.ShardError``, ``tracking.TrackingError`` (the store is unreachable or fails mid-run) and
    :class:`TrainError` (every point failed).
    """
    from voiceclf import relay, tracking
    from voiceclf import train as tr

    uri = tracking.connect(tracking_uri)
    data, dirs_of = load_data(features)
    if not all(d.speaker_level for d in data.values()):
        log.warning("NO SPEAKER IDS: splitting by file, so the same voice can sit in train and test and the scores will be optimistic")
    speakers = all_speakers(data)
    split = tr.split_speakers(speakers, seed=seed, holdout_corpus=holdout_corpus)
    xsplits = tr.cross_corpus_splits(split, speakers)
    points = [pt for fs in sorted(data) for pt in tr.grid(grids[data[fs].cfg.family], fs)]
    device = str(tr.pick_device(device))
    n_tasks = len(points) * (1 + len(xsplits))
    n_jobs = min(n_tasks, os.cpu_count() or 1) if jobs == -1 else min(jobs, n_tasks)
    if device != "cpu":
        n_jobs = 1  # one process owns the GPU; its batches are the parallelism
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    corpora = sorted(set(np.concatenate([d.corpus for d in data.values()])))
    sizes = {f"split_{s}_speakers": len(split[s]) for s in tr.SPLITS}
    common = {"seed": seed, "holdout_corpus": holdout_corpus or "", "corpora": ",".join(corpora), "device": device,
              "selection": "xval_score (leave each training corpus out in turn)" if xsplits else "val_score (one corpus: speaker split only)",
              "speaker_level_split": all(d.speaker_level for d in data.values()), **sizes}
    log.info("train: %d grid point(s) (%s) on %s; %d/%d/%d speakers (train/val/test)%s; %s; %d parallel; tracking %s",
             len(points), ", ".join(sorted(data)), ", ".join(corpora), len(split["train"]), len(split["val"]), len(split["test"]),
             f", test = corpus {holdout_corpus}" if holdout_corpus else "",
             f"points ranked by cross-corpus validation (each trains {len(xsplits)} more time(s), without {', '.join(xsplits)} in turn)" if xsplits
             else "points ranked by val_score (fewer than two training corpora: no cross-corpus validation)", n_jobs, uri)

    store_errors = tracking.store_errors()
    # System metrics are machine-wide (psutil, NVML), so they belong to the runs that had the machine
    # to themselves: the parent always (the whole grid); a grid point only when points train one at a
    # time (jobs 1, and always on a GPU), where the figures while it trains are its own. Points
    # training side by side would each show the same shared figures; they point to the parent.
    per_point = system_metrics and n_jobs == 1
    point_tags = {"voiceclf.system_metrics": "this run" if per_point else "parent run (points trained in parallel share the machine)"} if system_metrics else {}
    runs = None
    try:
        runs = tracking.GridRuns.start(experiment, grid_run_name(corpora, len(points), run_label), {
            **common, "grid_points": len(points), "features": ",".join(map(str, features)),
            **{f"grid.{fam}.{k}": v for fam, g in grids.items() for k, v in g.items()}}, system_metrics=system_metrics)
        if system_metrics and device != "cpu" and not runs.gpu_metrics:
            log.warning("system metrics: no GPU figures (install nvidia-ml-py for NVIDIA GPUs: pip install nvidia-ml-py); CPU and memory only")
        names = run_names(points)
        # A point's run opens when its first training starts (in a worker, it says when) and ends when its last one
        # ended, so the UI's duration is the point's own training, not the grid's.
        child_ids: list[str | None] = [None] * len(points)
        ended_s = [0.0] * len(points)

        def open_child(i: int, start_s: float) -> str:
            if child_ids[i] is None:
                pt = points[i]
                child_ids[i] = runs.child(names[i], {**tr.point_params(pt), **common, "data_fingerprint": data[pt.feature_set].fingerprint(),
                                                     **{f"feature.{k}": v for k, v in data[pt.feature_set].cfg.to_dict().items()}},
                                          tags={**point_tags, "voiceclf.point": pt.name}, start_time_s=start_s)
            return child_ids[i]
        # each point trains once on the split, and once per training corpus left out (the cross-corpus validation)
        tasks = [(i, left_out, sub) for i in range(len(points)) for left_out, sub in [(None, split), *xsplits.items()]]
        results: list[tr.PointResult | None] = [None] * len(points)
        xres: dict[int, dict[str, tr.PointResult]] = {i: {} for i in range(len(points))}
        model_uris = {}
        done = failed_n = 0
        on_progress(Progress("train", 0, len(tasks), unit="trainings"))
        # every epoch's end is a progress note, from the workers too (a CNN training takes minutes); Dask's are out of reach
        report = lambda note: on_progress(Progress("train", done, len(tasks), failed_n, "trainings", note))  # noqa: E731
        with parallel.engine(backend, scheduler), relay.epochs_reported(report, across_processes=n_jobs > 1 and backend != "dask") as epochs:
            if n_jobs == 1:  # in-process
                def in_process():
                    for task in tasks:
                        open_child(task[0], time.time())
                        if per_point:  # a point's trainings are consecutive, the one on the split first; finish() stops it
                            runs.watch(child_ids[task[0]])
                        yield run_task(task, points, data, seed, threads, device, epochs)
                stream = in_process()
            else:
                stream = parallel.imap(run_task, tasks, n_jobs=n_jobs, points=points, data=data, seed=seed, threads=threads, device=device,
                                       epochs=epochs if backend != "dask" else None)
            for (i, left_out, _), res in zip(tasks, stream):
                pt = points[i]
                open_child(i, res.started_s)
                ended_s[i] = max(ended_s[i], res.started_s + res.seconds)
                if left_out is None:
                    results[i] = res
                else:
                    res.model = None
                    xres[i][left_out] = res
                done += 1
                failed_n += int(res.error is not None)
                note = f"{pt.name}{f' without {left_out}' if left_out else ''}: " + ("FAILED" if res.error else
                        f"val_score {res.final['val_score']:.3f} (epoch {res.best_epoch})" + (f", on {left_out} {res.test['test_score']:.3f}" if left_out else ""))
                on_progress(Progress("train", done, len(tasks), failed_n, "trainings", note))
                if len(xres[i]) == len(xsplits) and results[i] is not None:  # all of this point's trainings are in
                    main = results[i]
                    failed = main.error or next((r.error for r in xres[i].values() if r.error), None)
                    if failed:
                        main.error = main.error or f"a cross-corpus validation training failed:\n{failed}"
                        log.error("grid point %s failed:\n%s", pt.name, main.error)
                        runs.finish(child_ids[i], ok=False, error=main.error, end_time_s=ended_s[i])
                    else:
                        calibrate_point(main, xres[i])
                        model_uris[child_ids[i]] = log_point(runs, child_ids[i], main, data[pt.feature_set], split)
                        d = data[pt.feature_set]
                        runs.log_datasets(child_ids[i], pt.feature_set, sorted({str(p) for p in dirs_of[pt.feature_set]}), d.fingerprint(),
                                          dataset_profiles(d, split), columns=shards.schema(d.cfg))
                        runs.finish(child_ids[i], end_time_s=ended_s[i])
        winner = tr.best(results)
        table = summary(points, child_ids, results, winner, corpora)
        if winner is None:
            runs.finish(runs.parent_id, ok=False, error="every grid point failed")
            log.info("grid search:\n%s", table.to_string(index=False))
            raise TrainError("every grid point failed; see the errors above and the runs in the MLflow UI")
        win_id = child_ids[results.index(winner)]
        out = TrainSummary(table, winner, win_id, uri)
        win_metrics = {**winner.val, **winner.xval, **winner.test, "best_epoch": winner.best_epoch}
        runs.log_summary(table, win_id, point_metrics(winner), {"winner": names[results.index(winner)]})
        runs.tag(win_id, {"winner": winner_reason(winner, results)})
        runs.describe(runs.parent_id, grid_markdown(table, corpora, holdout_corpus, bool(xsplits)))
        if register:
            out.promoted, out.reason = decide_promotion(winner, data, split, force_promote, model_name)
            out.version = tracking.register_version(model_uris[win_id], win_id, win_metrics, data[winner.point.feature_set].cfg, promote=out.promoted,
                                                    reason=out.reason, description=version_markdown(winner, corpora, out.reason, bool(xsplits)),
                                                    model_name=model_name)
            runs.tag(runs.parent_id, {"voiceclf.promoted": str(out.promoted).lower(), "voiceclf.promotion": out.reason})
        runs.finish(runs.parent_id, ok=True)
        return out
    except store_errors as e:
        raise tracking.TrackingError(f"tracking store {uri} failed mid-run: {type(e).__name__}: {str(e).splitlines()[0][:300]} — rerun when it is back") from None
    finally:
        if runs is not None:  # failed or interrupted: the sampling threads stop with the job
            runs.stop_system_metrics()


# ----------------------------------------------------------------------------- score
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


def collect(dirs: Sequence[str | os.PathLike]) -> tuple[list[batch.Item], list[batch.Result]]:
    """Every file under the folders: items to featurize, and hidden files reported (never skipped silently)."""
    items, hidden = [], []
    for d in map(Path, corpus.unique_sources(dirs)):  # a folder given twice is scored once
        if not d.is_dir():
            raise corpus.CorpusError(f"{d}: no such directory")
        for rel in corpus.list_files(d):
            it = batch.Item(path=io.name_as_text(rel), source=io.name_as_text(str(d)))  # a name that is not UTF-8 as lossless text
            if any(part.startswith(".") for part in Path(rel).parts):
                hidden.append(batch.Result(it, error="hidden", message=f"{it.abspath}: hidden file, not scored (rename it to score it)"))
            else:
                items.append(it)
    return items, hidden


def _on_device(model: tracking.LoadedModel, cfg: FeatureConfig, device):
    """The model's module on ``device``, tried on one window first: a model that cannot run there
    fails here, in one line, not in the middle of the batch."""
    from voiceclf.score import p_male

    try:
        module = model.module.to(device)
        p_male(module, np.zeros((1, *cfg.shape), dtype=np.float32))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(f"{model.uri} cannot run on {device}: {type(e).__name__}: {first}; try the CPU") from None
    return module


def score_dirs(
    dirs: Sequence[str | os.PathLike],
    *,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    threshold: float = 0.5,
    min_confidence: float = 0.0,
    jobs: int = -1,
    device: str = "auto",
    backend: str = "loky",
    scheduler: str | None = None,
    on_progress: OnProgress = _quiet,
) -> ScoreResult:
    """Label every file under ``dirs`` with a registered model, featurized with the model's own FeatureConfig.

    A file's p_male is calibrated with the model's calibration; below ``min_confidence`` its label is
    ``uncertain``. Every file gets a report row (``ok``, ``no_speech`` or ``error`` with the reason); a file never
    stops the batch. Raises ``corpus.CorpusError`` (a folder missing or unlistable),
    ``tracking.TrackingError`` (no such model, store unreachable, not a safe model), ``config.DataError``
    (``device`` cuda without CUDA), :class:`ModelError`, ``parallel.EngineError``.
    """
    from voiceclf import tracking  # MLflow; torch (~1.7 s of import) only once the workers are at work

    t0 = time.perf_counter()
    items, hidden = collect(dirs)
    tracking.connect(tracking_uri)
    uri = model_uri or tracking.DEFAULT_MODEL_URI
    # A registered version's tags hold its FeatureConfig: the workers start featurizing on it while the model
    # downloads and loads in a thread (seconds of MLflow and torch), pinned to that version even if the alias
    # moves meanwhile. The loaded model's own config must then be the same, or nothing is scored.
    registered = tracking.registered_config(uri)
    loader = pending = model = module = None
    if registered is None:
        model = tracking.load(uri)
        cfg, version = model.cfg, model.version
    else:
        name, version, cfg = registered
        loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="voiceclf-model-load")
        pending = loader.submit(tracking.load, f"models:/{name}/{version}")
    try:  # from here on, the loading thread is waited for whatever happens: it must not outlive this call
        _check_weights(cfg, f"{uri}: ")  # before any work
        dev = None
        if device not in ("auto", "cpu"):  # a device that may not be there is checked before any work (torch is imported for it)
            from voiceclf import train as tr

            dev = tr.pick_device(device)
        total = len(items) + len(hidden)
        rows, segments, first, errors = [], [], None, len(hidden)
        t_loop = time.perf_counter()
        # every window of a long recording: its turns and seconds per sex cover all of its speech
        with _featurized(items, cfg, jobs=jobs, backend=backend, scheduler=scheduler, max_windows=None) as stream:
            # The workers have their first batches: torch is imported while they work, not before they start.
            import torch

            from voiceclf import train as tr
            from voiceclf.calibration import IDENTITY
            from voiceclf.score import score_results

            dev = dev or tr.pick_device(device)

            def ready():
                """The model's module on the device, once it is loaded and known to read these features."""
                nonlocal model, module
                if module is None:
                    if model is None:
                        model = pending.result()
                        if model.cfg != cfg:
                            raise ModelError(f"{uri}: version {version} was trained with another feature config than its tags say; "
                                             "register it again")
                    # Inference is a small share of the work (thousands of windows/s on one core); more torch threads
                    # in the parent only spin against the featurize workers for the same cores.
                    torch.set_num_threads(1)
                    module = _on_device(model, cfg, dev)
                return module

            log.info("score: %d files in %s with %s (version %s, %s) on %s", total, ", ".join(map(str, dirs)), uri, version or "-", cfg.feature_set, dev)

            def score(results):
                module = ready() if any(r.n_windows for r in results) else None
                return score_results(results, module, threshold=threshold, model_uri=uri, model_version=version, window_s=cfg.window_s,
                                     calibration=model.calibration if module is not None else IDENTITY, min_confidence=min_confidence)

            rows += score(hidden)[0]
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
            ready()  # a batch with no windows anywhere still has its model checked
    finally:
        if loader is not None:
            loader.shutdown(wait=True)
    from voiceclf.score import REPORT_COLUMNS, SEGMENT_COLUMNS

    return ScoreResult(
        report=pd.DataFrame(rows, columns=REPORT_COLUMNS).sort_values("path", kind="stable", ignore_index=True),
        segments=pd.DataFrame(segments, columns=SEGMENT_COLUMNS).sort_values(["path", "start_s"], kind="stable", ignore_index=True),
        model_uri=uri, model_version=version, device=str(dev), seconds=time.perf_counter() - t0,
        loop_seconds=time.perf_counter() - t_loop, first_scored_s=first,
    )
