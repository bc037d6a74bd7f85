"""The files a score writes: checked before any work, locked while the batch runs, written without the job's own
files, and kept in the temp folder when their disk is full at the end.

Featurize's library checks and locks its shard folder itself (``featurize.prepare_out``, ``safeio.lock``); this is the
same for the report, which :func:`voiceclf.scoring.score_dirs` returns rather than writes (the demo and the
benchmark write theirs, or none).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from voiceclf import safeio, turn_formats
from voiceclf.safeio import OutputError

#: Free bytes an output's disk must have before any work: a disk already full is found before a long batch, not after.
MIN_FREE_BYTES = 1 << 20


class ReportNotWritten(RuntimeError):
    """The batch ran but its report (or turns) could not be written where asked; the message says where it was kept."""


def check_writable(path: Path) -> None:
    """``path`` can be written: its folder exists, is writable, and its disk is not full. Raises :class:`OutputError`."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"cannot write {path}: permission denied")
    free = shutil.disk_usage(parent).free
    if free < MIN_FREE_BYTES:
        raise OutputError(f"cannot write {path}: its disk has {free // 1024} KB free; free some space first")


def check_outputs(out: Path, segments: Path | None = None) -> None:
    """Refuse outputs that would overwrite each other or cannot be a file, before any work. Raises :class:`OutputError`."""
    for what, path in (("the report", out), ("the segments file", segments)):
        if path is not None and path.is_dir():
            raise OutputError(f"{what} {path} is a folder; give a file name (e.g. {path / 'report.csv'})")
    if segments is not None and segments.resolve() == out.resolve():
        raise OutputError(f"the report and the segments are the same file ({out}); the segments would overwrite the report")
    for path in filter(None, (out, segments)):
        check_writable(path)


@contextlib.contextmanager
def reserved(out: str | os.PathLike, segments: str | os.PathLike | None = None, wait: bool = False):
    """Check the outputs (:func:`check_outputs`), then hold the report's lock (``safeio.lock``) while the block scores
    and writes: a second run on the same report raises ``safeio.LockedError``, or waits for it with ``wait``."""
    check_outputs(Path(out), Path(segments) if segments is not None else None)
    with safeio.lock(out, wait=wait):
        yield


def without_own_files(report: pd.DataFrame, outputs: list[Path]) -> pd.DataFrame:
    """``report`` without the rows of the job's own files: an output inside a scored folder (``--out inbox/report.csv``),
    its lock and its temp files would be rows, and the next night last night's report a ``not_audio`` one."""
    own, beside = set(), {}
    for path in outputs:
        real = os.path.realpath(path)
        own.add(real)
        beside.setdefault(os.path.dirname(real), []).append(re.compile(rf"^\.{re.escape(os.path.basename(real))}\.(lock|[0-9a-f]{{24}}\.tmp)$"))

    def is_own(p: str) -> bool:
        real = os.path.realpath(os.fsdecode(safeio.name_on_disk(p)))
        return real in own or any(rx.match(os.path.basename(real)) for rx in beside.get(os.path.dirname(real), []))

    mine = report["path"].map(is_own)
    return report[~mine].reset_index(drop=True) if mine.any() else report


def write_or_rescue(table: pd.DataFrame, path: Path, what: str = "report") -> None:
    """Write a finished table to ``path``; if its disk cannot take it, keep it in the temp folder and say where
    (:class:`ReportNotWritten`). The work of a long batch is in this table: a full disk at the last step must not lose it."""
    try:
        safeio.write_csv(table, path, float_format="%.6g")
        return
    except OSError as e:
        reason = f"cannot write {path}: {e.strerror or e}"
    rescue = Path(tempfile.gettempdir()) / f"voiceclf-{what}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.csv"
    try:
        safeio.write_csv(table, rescue, float_format="%.6g")
    except OSError as e:
        raise ReportNotWritten(f"{reason}; keeping it in {rescue.parent} failed too ({e.strerror or e}): the {what} of {len(table)} rows is lost, "
                               "free space and rerun") from None
    raise ReportNotWritten(f"{reason}; the {what} ({len(table)} rows) was kept in {rescue}: move it into place once there is room")


def write(report: pd.DataFrame, out: str | os.PathLike, segments: pd.DataFrame | None = None, segments_path: str | os.PathLike | None = None,
          segments_format: str = "csv") -> pd.DataFrame:
    """Write the report to ``out`` (and the turns to ``segments_path``), each without the rows of these files
    themselves; returns the report as written. Raises :class:`ReportNotWritten`."""
    out = Path(out)
    report = without_own_files(report, [p for p in (out, segments_path) if p is not None])
    write_or_rescue(report, out, "report")
    if segments_path is not None:
        try:  # the report is written by now: a segments file its disk cannot take loses only itself
            turn_formats.write(segments, report, segments_path, segments_format)
        except OSError as e:
            raise ReportNotWritten(f"cannot write {segments_path}: {e.strerror or e}; the report {out} was written") from None
    return report
