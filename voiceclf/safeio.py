"""Files that are never half-written, and a lock per output: the one place for both.

Every output of the project (shards, errors.csv, the score report and segments, the benchmark's
files) is written under a temp name beside its final path and renamed into place, so a reader, a
crash or a kill never sees a partial file. Two runs on one output serialise on :func:`lock`.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:  # pandas only where a table is written: a featurize worker reads pinned weights through here
    import pandas as pd


class OutputError(ValueError):
    """An output cannot be used: a folder not creatable or not writable or holding other features, a report path that
    is a folder, unwritable, on a full disk, or the same file as another output."""


class LockedError(RuntimeError):
    """Another process holds the lock on the same output."""

    def __init__(self, target: Path, holder: str) -> None:
        super().__init__(f"{target} is locked by a running job (pid {holder})")
        self.target, self.holder = target, holder


class UnsafeOutputError(RuntimeError):
    """A lock or temp path beside an output is a symbolic link, a hard link or not a regular file.

    Someone who can write to a shared output folder could otherwise plant ``.voiceclf.lock`` as a link to
    any file, and the job (perhaps root's cron) would truncate it and write its pid there."""


# O_NOFOLLOW: a planted symbolic link at the final component fails the open (ELOOP) instead of being followed.
# O_NONBLOCK: a planted FIFO does not hang the open; it is refused as not a regular file right after.
_NO_LINKS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_regular(path: Path, flags: int, what: str) -> int:
    """``os.open`` that follows no link and returns only a regular file's descriptor (else UnsafeOutputError)."""
    try:
        fd = os.open(path, flags | _NO_LINKS, 0o666 if flags & os.O_EXCL else 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeOutputError(f"{path}: the {what} is a symbolic link; refusing to follow it (remove it if it is not yours)") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        kind = "a hard link to another file" if stat.S_ISREG(st.st_mode) else "not a regular file"
        raise UnsafeOutputError(f"{path}: the {what} is {kind}; refusing to write to it (remove it if it is not yours)")
    os.set_blocking(fd, True)
    return fd


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; renamed onto ``path`` when the block ends without error.

    On an error (or a kill) the temp file is removed or left under a hidden ``.<name>.*.tmp`` name,
    never under the final one. The file gets the mode a plain ``open`` would give (umask applied).
    Writers of this module use :func:`atomic_file`, which writes through the descriptor it created: a
    name can be swapped for a link between its creation and a later open by name.
    """
    path = Path(path)
    # The random name is chosen before the file exists (not by tempfile.mkstemp), so the finally removes it
    # whenever an exception lands, a SIGTERM turned into Interrupted included: one that landed inside
    # mkstemp after it had created the file left it behind. 96 random bits: O_EXCL never meets another's.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(12)}.tmp")
    try:
        os.close(_open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "temp file"))  # the kernel applies the umask
        yield tmp
        os.replace(tmp, path)  # rename replaces a link at ``path`` itself, never what it points to
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb"):
    """An open file beside ``path`` (created O_EXCL, no link followed), renamed onto ``path`` when the block ends without error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(12)}.tmp")
    try:
        fd = _open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "temp file")
        with open(fd, mode, **({} if "b" in mode else {"newline": "", "encoding": "utf-8"})) as f:
            yield f
            f.flush()
            # the name must still be the file written: one swapped for a link would be renamed onto ``path``
            if not os.path.samestat(os.fstat(f.fileno()), os.lstat(tmp)):
                raise UnsafeOutputError(f"{tmp}: the temp file was replaced while it was written; {path} is left as it was")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w") as f:
        f.write(text)


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    """Write a DataFrame as Parquet atomically, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        df.to_parquet(f, index=False)


# ----------------------------------------------------------------------------- file names that are not UTF-8
# A Samba or Latin-1 share holds names whose bytes are not UTF-8; Python lists them with surrogate escapes
# ('bad\udcffname.wav'), which no UTF-8 writer (CSV, Parquet, pandas' Arrow strings) accepts. Names are
# therefore carried as text in a documented, lossless form (README "Accepted layouts"): a byte that is not
# UTF-8 is written \xNN, and a backslash that would read as such an escape is written \x5c. Every other name
# is unchanged. Hand-written: Python's "backslashreplace" error handler escapes, but nothing reads it back.
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
_LOOKS_ESCAPED = re.compile(r"\\(?=x[0-9a-fA-F]{2})")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def name_as_text(name: str) -> str:
    """A file name as listed by ``os`` (surrogate escapes for bytes that are not UTF-8) → text any writer takes, losslessly."""
    if _is_utf8(name) and "\\x" not in name:
        return name
    name = _LOOKS_ESCAPED.sub(r"\\x5c", name)
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff" else c for c in name)


def name_on_disk(text: str) -> str | bytes:
    """The inverse of :func:`name_as_text`: the name to open; bytes when it is not UTF-8 (libsndfile takes bytes, not surrogates)."""
    if "\\x" not in text:
        return text
    name = _ESCAPE.sub(lambda m: chr(b if (b := int(m[1], 16)) < 0x80 else 0xDC00 + b), text)
    return name if _is_utf8(name) else os.fsencode(name)


def as_text(value: str) -> str:
    """Any message as text a UTF-8 writer takes: surrogate escapes (a name inside an OS error) become \\xNN."""
    return value if _is_utf8(value) else value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# A text cell starting with one of these is a formula when the CSV is opened in a spreadsheet (a
# file named "=HYPERLINK(...).wav"); a leading ' makes it text (OWASP, CSV injection). A cell that
# starts with ' gets one more, so reading back (strip one leading ') gives exactly what was written.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def _as_text(value):
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def _as_written(value):
    return value[1:] if isinstance(value, str) and value.startswith("'") else value


def write_csv(df: pd.DataFrame, path: str | Path, **to_csv) -> None:
    """Write a CSV atomically. Text cells a spreadsheet would run as formulas get a leading ``'``."""
    import pandas as pd

    text = [c for c in df.columns if df[c].dtype == object or isinstance(df[c].dtype, pd.StringDtype)]
    df = df.assign(**{c: df[c].map(_as_text) for c in text})
    with atomic_file(path, "w") as f:
        df.to_csv(f, index=False, **to_csv)


def read_csv(path: str | Path) -> pd.DataFrame:
    """A CSV written by :func:`write_csv`, every cell as the text that was written."""
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False).map(_as_written)


@contextlib.contextmanager
def lock(target: str | Path, wait: bool = False) -> Iterator[None]:
    """An exclusive lock beside ``target`` (a directory or a file) for the duration of the block.

    Two scheduled runs on the same output must not interleave their writes: the second raises
    :class:`LockedError`, or blocks until the first is done with ``wait`` (logging first that it waits, and
    for which pid, so a queued run says why it is idle). The lock file holds the holder's pid and is removed
    when the block ends. A lock path that is a link or not a regular file raises :class:`UnsafeOutputError`:
    it is never followed, truncated or written.
    """
    target = Path(target)
    lock_path = target / ".voiceclf.lock" if target.is_dir() else target.with_name(f".{target.name}.lock")
    while True:
        fd = _open_regular(lock_path, os.O_RDWR | os.O_CREAT, "lock file")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                if not wait:
                    raise LockedError(target, holder) from None
                logging.getLogger("voiceclf").info("%s: waiting for it", LockedError(target, holder))
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        # The holder removes the file when done: a lock taken on a removed file locks nothing, retry.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # while still holding it, so nothing is left beside the output
        os.close(fd)


# ----------------------------------------------------------------------------- safetensors
# The format of the Silero VAD's weights and of a model's state dict beside its pt2 archive: an 8-byte
# little-endian header length, a JSON header (dtype, shape and data offsets of each array), the raw arrays.
# Only arrays, never code. Written by hand, not with the ``safetensors`` package: float32 arrays are all we
# store, and these twenty lines are the whole of the format for them.
def write_safetensors(arrays: dict[str, np.ndarray], path: str | Path) -> None:
    """float32 arrays as a safetensors file (atomically), in the order given."""
    header, offset = {}, 0
    for name, a in arrays.items():
        if a.dtype != np.float32:
            raise ValueError(f"{name}: only float32 arrays are written, got {a.dtype}")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format's alignment of the data that follows
    with atomic_file(path) as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for a in arrays.values():
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """The float32 arrays of a safetensors file's bytes; ValueError for anything else (another dtype, a damaged file)."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        out = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            if spec["dtype"] != "F32":
                raise ValueError(f"{name}: expected F32 arrays, got {spec['dtype']}")
            a, b = spec["data_offsets"]
            shape = tuple(int(d) for d in spec["shape"])
            if not 0 <= a <= b <= len(data) - 8 - n or b - a != 4 * int(np.prod(shape)):
                raise ValueError(f"{name}: its data lies outside the file or does not match its shape {shape}")
            out[name] = np.frombuffer(data, "<f4", (b - a) // 4, 8 + n + a).reshape(shape).astype(np.float32)
        return out
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a safetensors file ({type(e).__name__}: {e})") from None
