"""Parquet feature shards: schema, atomic writer, reader, and the incremental index.

A featurize output directory holds ``part-NNNNN.parquet`` (one row per window, the
FeatureConfig as JSON in the schema metadata) and ``errors.csv`` (one row per file that gave
no windows), so every input file is accounted for.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from voiceclf import safeio
from voiceclf.file_windows import Item, Result, window_rows
from voiceclf.config import FeatureConfig

CONFIG_KEY = b"voiceclf.feature_config"
ERRORS = "errors.csv"
# path, error, message are the contract; source and sha256 let a rerun skip files that already failed
ERROR_COLUMNS = ["path", "error", "message", "source", "sha256"]
_PART = re.compile(r"^part-(\d{5,})\.parquet$")


class ShardError(ValueError):
    """Shards are missing, unreadable, or were made with different FeatureConfigs."""


class NoShards(ShardError):
    """A feature folder that does not exist or holds no shards: features have not been made yet."""

    missing = "features"  # what to make first; the jobs turn it into a next step


def _damaged(path: Path, e: Exception) -> ShardError:
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return ShardError(f"{path}: cannot read this shard ({reason}): it is damaged or unreadable; delete it and rerun "
                      "featurize with the same sources to rebuild it (the files in it are featurized again)")


def _read_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise _damaged(path, e) from None


def _read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A shard's columns with every page checked against its CRC: zeroed or flipped bytes are an error, not data."""
    try:
        return pq.read_table(path, columns=columns, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        raise _damaged(path, e) from None


def verify(out_dir: str | Path) -> None:
    """Read every page of every shard (one row group at a time) and check its CRC; a damaged shard is a ShardError.

    Shards written before page checksums existed are read whole, which still finds truncation and a broken footer.
    """
    for p in part_paths(out_dir):
        try:
            f = pq.ParquetFile(p, page_checksum_verification=True)
            for i in range(f.num_row_groups):
                f.read_row_group(i)
        except (OSError, pa.ArrowException) as e:
            raise _damaged(p, e) from None


def schema(cfg: FeatureConfig) -> pa.Schema:
    size = int(np.prod(cfg.shape))
    return pa.schema(
        [
            ("path", pa.string()),
            ("source", pa.string()),
            ("corpus", pa.string()),
            ("sha256", pa.string()),
            ("speaker", pa.string()),
            ("label", pa.string()),
            ("window", pa.int32()),
            ("offset_s", pa.float32()),
            ("speech_s", pa.float32()),  # seconds of speech in the window (less than its length when padded)
            ("source_sample_rate", pa.int32()),
            ("variant", pa.int8()),  # 0: the recording; k > 0: its k-th augmented variant
            ("features", pa.list_(pa.float32(), size)),
        ],
        metadata={CONFIG_KEY: cfg.to_json().encode()},
    )


def part_paths(out_dir: str | Path) -> list[Path]:
    d = Path(out_dir)
    return sorted(p for p in d.iterdir() if _PART.match(p.name)) if d.is_dir() else []


class ShardWriter:
    """Buffers results in order and writes a shard at the first file boundary past ``shard_rows`` windows.

    A file's rows (its recording and the augmented variants that follow it) never straddle two
    shards, so a shard on disk is complete for every file in it, and an interrupted run can resume
    by skipping the files already present: a file cut off from its variants would be skipped too,
    and its variants lost for good.
    """

    def __init__(self, out_dir: str | Path, cfg: FeatureConfig, shard_rows: int = 2048) -> None:
        self.out_dir, self.cfg, self.shard_rows = Path(out_dir), cfg, shard_rows
        self.schema = schema(cfg)
        existing = [int(_PART.match(p.name).group(1)) for p in part_paths(self.out_dir)]
        self.next_index = max(existing, default=-1) + 1
        self._buffer: list[Result] = []
        self._rows = 0
        self._complete = 0  # _buffer[:_complete] are whole files; the rest is the last file, its variants may follow
        self.written: list[Path] = []
        self.errors: list[dict] = []

    def add(self, result: Result) -> None:
        """Add results in featurize_batch's order: a file's recording (variant 0), then its variants."""
        if result.item.variant == 0:  # a new file: the ones buffered are whole, a shard may end here
            if self._rows >= self.shard_rows:
                self.flush()
            self._complete = len(self._buffer)
        if result.error:
            it = result.item
            self.errors.append(dict(path=it.path, error=result.error, message=result.message, source=it.source, sha256=it.sha256 or ""))
            return
        self._buffer.append(result)
        self._rows += result.n_windows

    def flush(self, whole_files_only: bool = False) -> None:
        """Write what is buffered. ``whole_files_only`` (an interrupted run) leaves out the last file, whose
        variants may not have arrived: it is in no shard, so a rerun featurizes it again."""
        keep = self._buffer[self._complete :] if whole_files_only else []
        todo = self._buffer[: self._complete] if whole_files_only else self._buffer
        if todo:
            self.written.append(self._write(todo))
        self._buffer, self._rows, self._complete = keep, sum(r.n_windows for r in keep), 0
        if self.errors:
            append_errors(self.out_dir, self.errors)
            self.errors = []

    def _write(self, results: list[Result]) -> Path:
        columns = window_rows(results)
        arrays = [pa.array(columns[f.name], type=f.type) for f in self.schema if f.name != "features"]
        # One chunk per file, each a view of that file's own array: no concatenated copy of a shard's features
        # (29 MB at 2,048 windows) in the parent, which holds the buffered results already.
        ftype = self.schema.field("features").type
        arrays.append(pa.chunked_array([pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(r.windows.features, np.float32).reshape(-1)),
                                                                          ftype.list_size) for r in results], ftype))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        final = self.out_dir / f"part-{self.next_index:05d}.parquet"
        _write_table(table, final)
        self.next_index += 1
        return final


ROW_GROUP_ROWS = 256


def _write_table(table: pa.Table, final: Path) -> None:
    """Write a shard under a temp name and rename it into place, with a CRC on every page (checked on read)."""
    # Dictionary encoding only where values repeat (the names): tried on the features column it is wasted work
    # (random floats) and was most of a shard's write time (0.15 → 0.06 s per 2,048 rows, and the shard is smaller).
    names = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    with safeio.atomic_file(final) as f:
        # Row groups of 256 windows (3.6 MB of features): the writer encodes one at a time instead of the whole shard.
        pq.write_table(table, f, write_page_checksum=True, use_dictionary=names, row_group_size=ROW_GROUP_ROWS)


def read_errors(out_dir: str | Path) -> pd.DataFrame:
    path = Path(out_dir) / ERRORS
    if not path.exists():
        return pd.DataFrame(columns=ERROR_COLUMNS)
    return safeio.read_csv(path)


def append_errors(out_dir: str | Path, rows: list[dict]) -> None:
    """Add rows to errors.csv atomically (the whole file is rewritten, then renamed into place)."""
    path = Path(out_dir) / ERRORS
    old = read_errors(out_dir)
    new = pd.DataFrame(rows, columns=ERROR_COLUMNS)
    merged = pd.concat([old, new], ignore_index=True) if len(old) else new
    # a file that failed before and fails again keeps one row: the latest reason
    safeio.write_csv(merged.drop_duplicates(subset=["source", "path", "sha256"], keep="last"), path)


def shard_config(path: str | Path) -> FeatureConfig:
    meta = _read_schema(Path(path)).metadata or {}
    if CONFIG_KEY not in meta:
        raise ShardError(f"{path}: no {CONFIG_KEY.decode()} metadata; not a voiceclf shard")
    return FeatureConfig.from_json(meta[CONFIG_KEY].decode())


def dir_config(out_dir: str | Path) -> FeatureConfig | None:
    """The one FeatureConfig of a shard directory (None when it has no shards yet)."""
    configs = {shard_config(p) for p in part_paths(out_dir)}
    if len(configs) > 1:
        raise ShardError(f"{out_dir}: shards made with {len(configs)} different FeatureConfigs")
    return configs.pop() if configs else None


def pop_errors(out_dir: str | Path, code: str, sources: set[str]) -> set[tuple[str, str, str]]:
    """Remove the errors.csv rows with error ``code`` of ``sources``; returns their (source, path, sha256) keys.

    Featurize derives its ``duplicate`` rows anew on every run: one whose twin was deleted or changed since
    must not stay, or a resumed folder would differ from a clean run's."""
    errors = read_errors(out_dir)
    if not len(errors) or not {"source", "sha256"} <= set(errors.columns):
        return set()
    drop = (errors["error"] == code) & errors["source"].isin(sources)
    if not drop.any():
        return set()
    keys = set(zip(errors.loc[drop, "source"], errors.loc[drop, "path"], errors.loc[drop, "sha256"]))
    safeio.write_csv(errors[~drop], Path(out_dir) / ERRORS)
    return keys


def accounted(out_dir: str | Path) -> dict[tuple[str, str, str], str | None]:
    """Every file the folder accounts for: (source, path, sha256) → its label, shard files first, then errors.csv
    rows (label None). Featurize matches files by this key: a path whose content another path holds already is
    not "done", it gets its own ``duplicate`` row."""
    out: dict[tuple[str, str, str], str | None] = {}
    for p in part_paths(out_dir):
        t = _read_table(p, columns=["source", "path", "sha256", "label"])
        for row in zip(*(t.column(c).to_pylist() for c in ("source", "path", "sha256", "label"))):
            out.setdefault(row[:3], row[3])
    errors = read_errors(out_dir)
    if {"source", "sha256"} <= set(errors.columns):
        for key in zip(errors["source"], errors["path"], errors["sha256"]):
            out.setdefault(key, None)
    return out


# What discovery says about a file, as the shard rows store it
_ABOUT = ("path", "source", "corpus", "speaker", "label")


@dataclass
class Reconciled:
    """What :func:`reconcile` changed, one entry per file, e.g. ``male/a.wav → female/a.wav (male → female)``."""

    relabelled: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)  # moved or renamed, or a new speaker or corpus; same label
    removed: list[str] = field(default_factory=list)  # gone from the sources: its rows are dropped
    errors_dropped: list[str] = field(default_factory=list)  # errors.csv rows of files no longer listed as they were
    shards_rewritten: int = 0

    def __bool__(self) -> bool:
        return bool(self.relabelled or self.updated or self.removed or self.errors_dropped)


def reconcile(out_dir: str | Path, items: list[Item]) -> Reconciled:
    """Bring the shards and errors.csv in line with the files discovery lists now.

    Files are skipped by content hash, so without this a file moved from ``male/`` to ``female/``
    would keep ``male`` and a deleted file would stay in the training data. A file in the shards is
    matched by (source, path, sha256) to ``items``: listed with another label, speaker or corpus, its
    rows take the new values; not listed but its content is, at a path not in the shards yet (moved,
    renamed), its rows take that path and its values; otherwise (deleted, changed, no longer listed)
    its rows are dropped. errors.csv rows of files not listed as they were are dropped, so such a file
    is tried again. Only rows whose source is one of the items' sources are touched: a shard folder
    may hold corpora featurized by other runs. Each affected shard is rewritten atomically (temp file,
    then rename; a shard left empty is deleted): an interrupted reconcile is finished by the next run.
    """
    out_dir, out = Path(out_dir), Reconciled()
    sources = {it.source for it in items}
    listed = {(it.source, it.path, it.sha256): it for it in items if it.sha256}
    by_hash: dict[str, list[Item]] = {}
    for it in listed.values():
        by_hash.setdefault(it.sha256, []).append(it)
    cfg = dir_config(out_dir)
    parts = part_paths(out_dir)
    files: dict[Path, dict[tuple, dict]] = {}  # shard → (source, path, sha256) → its values
    for p in parts:
        t = _read_part(p, cfg, with_features=False).select([*_ABOUT, "sha256"]).to_pylist()
        files[p] = {(r["source"], r["path"], r["sha256"]): r for r in t if r["source"] in sources}
    taken = {key for keys in files.values() for key in keys if key in listed}
    plan: dict[Path, dict[tuple, Item | None]] = {}  # shard → changed file → its item now (None: drop it)
    for p, keys in files.items():
        for key, old in sorted(keys.items()):
            now = listed.get(key)
            if now is None:
                now = next((it for it in by_hash.get(key[2], []) if (it.source, it.path, it.sha256) not in taken), None)
                if now is not None:
                    taken.add((now.source, now.path, now.sha256))
            if now is None:
                plan.setdefault(p, {})[key] = None
                out.removed.append(old["path"])
                continue
            new = {a: getattr(now, a) for a in _ABOUT}
            if all(old[a] == new[a] for a in _ABOUT):
                continue
            plan.setdefault(p, {})[key] = now
            what = old["path"] if old["path"] == new["path"] else f"{old['path']} → {new['path']}"
            if old["label"] != new["label"]:
                out.relabelled.append(f"{what} ({old['label']} → {new['label']})")
            else:
                out.updated.append(what)
    for p, changes in plan.items():
        table = _read_part(p, cfg, with_features=True)
        keys = list(zip(*(table.column(c).to_pylist() for c in ("source", "path", "sha256"))))
        keep = [changes.get(k, True) is not None for k in keys]
        table = table.filter(pa.array(keep))
        if table.num_rows == 0:
            p.unlink()
        else:
            kept = [k for k, ok in zip(keys, keep) if ok]
            columns = {a: [getattr(changes[k], a) if k in changes else v for k, v in zip(kept, table.column(a).to_pylist())] for a in _ABOUT}
            arrays = [pa.array(columns[f.name], f.type) if f.name in columns else table.column(f.name) for f in schema(cfg)]
            _write_table(pa.Table.from_arrays(arrays, schema=schema(cfg)), p)
        out.shards_rewritten += 1
    errors = read_errors(out_dir)
    if len(errors) and {"source", "sha256"} <= set(errors.columns):  # an errors.csv from before those columns: left alone
        now_keys = {(it.source, it.path, it.sha256 or "") for it in items}
        # a listed file whose content now has rows under its own path (its twin was deleted or changed) loses its duplicate row
        stale = errors["source"].isin(sources) & ~pd.Series([k in now_keys and k not in taken for k in zip(errors["source"], errors["path"], errors["sha256"])],
                                                            index=errors.index)
        if stale.any():
            out.errors_dropped = errors.loc[stale, "path"].tolist()
            safeio.write_csv(errors[~stale], out_dir / ERRORS)
    return out


#: Columns renamed since shards were first written (issue 10: one name, one meaning): old name → new.
RENAMED = {"augment": "variant", "duration_s": "speech_s"}


def _read_part(path: Path, cfg: FeatureConfig, with_features: bool) -> pa.Table:
    """One shard in the current schema. Older shards read under the renamed columns' new names, and
    with ``corpus`` = the source folder's name when they predate that column."""
    names = _read_schema(path).names
    old_name = {new: old for old, new in RENAMED.items() if old in names and new not in names}
    wanted = [f.name for f in schema(cfg) if with_features or f.name != "features"]
    on_disk = {n: old_name.get(n, n) for n in wanted}
    missing = [n for n in wanted if on_disk[n] not in names and n != "corpus"]
    if missing:
        raise ShardError(f"{path}: written by an older voiceclf (no {', '.join(missing)} column); delete its folder and featurize again")
    present = [n for n in wanted if on_disk[n] in names]
    table = _read_table(path, columns=[on_disk[n] for n in present]).rename_columns(present)
    if "corpus" not in names:
        corpus = [Path(s).name for s in table.column("source").to_pylist()]
        table = table.add_column(wanted.index("corpus"), "corpus", pa.array(corpus, pa.string()))
    return table


def read(dirs: list[str | Path] | str | Path, *, with_features: bool = True) -> tuple[pd.DataFrame, np.ndarray | None, FeatureConfig]:
    """Read shard directories → (one row per window without features, features (N, *cfg.shape): (N, 3, 98, 12) or (N, 256), config).

    All shards must share one FeatureConfig.
    """
    dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
    parts = []
    for d in dirs:
        if not Path(d).is_dir():
            raise NoShards(f"{d}: no such feature directory")
        found = part_paths(d)
        if not found:
            raise NoShards(f"{d}: no part-*.parquet shards in it")
        parts += found
    configs = {p: shard_config(p) for p in parts}
    if len(set(configs.values())) > 1:
        raise ShardError(
            "the shards were made with different FeatureConfigs: "
            + "; ".join(sorted({f"{c.feature_set} ({p.parent})" for p, c in configs.items()}))
        )
    cfg = next(iter(configs.values()))
    tables = [_read_part(p, cfg, with_features) for p in parts]
    table = pa.concat_tables(tables)
    feats = None
    if with_features:
        feats = table.column("features").combine_chunks().flatten().to_numpy().reshape(-1, *cfg.shape)
        table = table.drop(["features"])
    return table.to_pandas(), feats, cfg
