"""Labelled audio on disk → one DataFrame of files, whatever the layout.

Three layouts are recognised (see :func:`discover`): AudioMNIST, label folders and a
manifest CSV. Files are listed by what is on disk, never filtered by extension or content:
a file that is not audio stays in the table so that a later stage reports it as an error,
instead of it silently disappearing from the corpus.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path

import pandas as pd

from voiceclf import audio, safeio
from voiceclf.config import LABELS

log = logging.getLogger("voiceclf")

__all__ = ["CorpusError", "discover", "list_files", "normalise_label", "AUDIOMNIST_META"]

#: Name of the AudioMNIST speaker metadata file at the corpus root.
AUDIOMNIST_META = "audioMNIST_meta.txt"

# AudioMNIST file names: <digit>_<speaker>_<take>.wav
_AUDIOMNIST_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)\.wav$", re.IGNORECASE)

_LABEL_ALIASES = {
    "female": "female", "f": "female", "woman": "female",
    "male": "male", "m": "male", "man": "male",
}
assert set(_LABEL_ALIASES.values()) == set(LABELS)

# How many offending rows/entries an error message lists before "... and N more".
_MAX_LISTED = 5

_LAYOUTS_HELP = (
    "expected one of: (1) AudioMNIST: <root>/<speaker>/<digit>_<speaker>_<take>.wav with "
    f"<root>/{AUDIOMNIST_META}; (2) label folders: <root>/female/** and <root>/male/**; "
    "(3) a manifest .csv with columns path,label[,speaker][,corpus] (paths relative to its folder)"
)


class CorpusError(ValueError):
    """The source cannot be turned into a list of labelled files; the message says why.

    ``outside_paths``: among the reasons, manifest paths that ``allow_outside_paths`` would accept.
    """

    outside_paths: bool = False


# -- helpers ----------------------------------------------------------------------------
def normalise_label(value: object) -> str | None:
    """Map a gender/label value to ``"female"``/``"male"``, case-insensitively.

    Accepts female/f/woman and male/m/man (surrounding whitespace ignored).

    Returns
    -------
    str or None
        The canonical label, or None when the value is not recognised.
    """
    if not isinstance(value, str):
        return None
    return _LABEL_ALIASES.get(value.strip().lower())


def listing(items: list, limit: int = _MAX_LISTED) -> str:
    """``"a, b, c, ... and N more"``: the first ``limit`` items of a list for a message, and how many more there are."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _table(rows: list[dict], root: Path, extra_columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Rows → the DataFrame contract of :func:`discover`, sorted by path.

    speaker and label are object columns so that "unknown" stays ``None``: the default
    string dtype of pandas 3 would turn it into NaN, which is truthy and not a str.
    """
    if not rows:
        raise CorpusError(f"no files found in {root}")
    # names whose bytes are not UTF-8 (a Latin-1 share) as lossless text: pandas' Arrow strings refuse them
    for r in rows:
        for col in ("path", "source", "speaker", "corpus"):
            if isinstance(r.get(col), str):
                r[col] = safeio.name_as_text(r[col])
    df = pd.DataFrame(rows)
    for col in ("speaker", "label"):
        df[col] = pd.Series([r[col] for r in rows], dtype=object, index=df.index)
    for col, dtype in (extra_columns or {}).items():
        df[col] = df[col].astype(dtype)
    if "corpus" not in df:
        df["corpus"] = safeio.name_as_text(root.name)
    front = ["path", "source", "corpus", "speaker", "label"]
    df = df[front + [c for c in df.columns if c not in front]]
    return df.sort_values("path", kind="stable", ignore_index=True)


def list_files(root: str | os.PathLike) -> list[str]:
    """Every file under ``root``, recursively, hidden ones included.

    Parameters
    ----------
    root : str or os.PathLike
        A folder.

    Returns
    -------
    list of str
        POSIX paths relative to ``root``, sorted. Symbolic links to files count as files;
        symbolic links to folders are not followed (they could loop). What cannot be read
        as a file is listed too, so that reading it fails and it is reported instead of
        lost: broken and looping links, links to folders, sub-folders that cannot be listed,
        FIFOs, sockets and devices (reported without being opened: reading one could hang).

    Raises
    ------
    CorpusError
        ``root`` does not exist, is not a folder, or cannot be listed.
    """
    base = Path(root)
    if not base.exists():
        raise CorpusError(f"{base} does not exist")
    if not base.is_dir():
        raise CorpusError(f"{base} is not a folder (expected a folder of audio files)")
    out = []

    def unlisted(e: OSError) -> None:
        if e.filename is None or Path(e.filename) == base:
            raise CorpusError(f"cannot list {base}: {e.strerror or e}")
        out.append(Path(e.filename).relative_to(base).as_posix())

    for dirpath, dirnames, filenames in os.walk(base, onerror=unlisted):
        for fn in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append(Path(dirpath, fn).relative_to(base).as_posix())  # FIFOs, sockets and devices too: reported, not read
    return sorted(out)


def unique_sources(sources) -> list:
    """``sources`` without the ones that are the same folder or file as an earlier one (``base``, ``base/``,
    ``../x/base``, a link to it): each would list every file again. The first spelling given is kept."""
    seen: dict[str, object] = {}
    for src in sources:
        real = os.path.realpath(src)
        if real in seen:
            log.warning("%s is %s again (given twice): listed once", src, seen[real])
            continue
        seen[real] = src
    return list(seen.values())


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def _refuse_stray_audio(root: Path, where: str) -> None:
    """Refuse audio lying at the top level of a layout that takes files from sub-folders.

    Such a file would get no label; refusing is better than dropping it silently. Other
    top-level files (README, licence, metadata) are not part of the corpus.
    """
    stray = [f.name for f in sorted(root.iterdir()) if f.is_file() and audio.sniff(f)]
    if stray:
        raise CorpusError(
            f"audio file(s) {listing(stray)} in {root} lie outside {where}, so they have "
            "no label; move them into a sub-folder or remove them"
        )


# -- layouts ----------------------------------------------------------------------------
def _audiomnist(root: Path) -> pd.DataFrame:
    meta_path = root / AUDIOMNIST_META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"{meta_path}: cannot read the AudioMNIST metadata as JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CorpusError(
            f"{meta_path}: expected a JSON object of speaker id -> {{\"gender\": ...}}, "
            f"got {type(meta).__name__}"
        )

    speakers = [d.name for d in _subdirs(root)]
    missing = [s for s in speakers if s not in meta]
    if missing:
        raise CorpusError(
            f"speaker folder(s) {listing([repr(s) for s in missing])} in {root} have no entry "
            f"in {meta_path}"
        )
    labels: dict[str, str] = {}
    for spk in speakers:
        entry = meta[spk]
        gender = entry.get("gender") if isinstance(entry, dict) else None
        label = normalise_label(gender)
        if label is None:
            raise CorpusError(
                f"{meta_path}: speaker {spk!r} has gender {gender!r}; "
                "expected female/f/woman or male/m/man"
            )
        labels[spk] = label

    _refuse_stray_audio(root, "the speaker folders")
    rows = []
    for spk in speakers:
        for rel in list_files(root / spk):
            m = _AUDIOMNIST_NAME.match(Path(rel).name)
            rows.append({
                "path": f"{spk}/{rel}",
                "source": str(root),
                "speaker": spk,
                "label": labels[spk],
                "digit": int(m.group(1)) if m else None,
                "take": int(m.group(3)) if m else None,
            })
    # nullable ints: a file whose name does not match has no digit/take
    return _table(rows, root, {"digit": "Int64", "take": "Int64"})


def _label_folders(root: Path, label_dirs: dict[str, Path]) -> pd.DataFrame:
    others = [d.name for d in _subdirs(root) if d not in label_dirs.values()]
    if others:
        raise CorpusError(
            f"unknown label folder(s) {listing([repr(o) for o in others])} in {root}; "
            f"expected only {' and '.join(d + '/' for d in LABELS)}"
        )
    _refuse_stray_audio(root, "the label folders female/ and male/")
    rows = []
    for label, folder in label_dirs.items():
        for rel in list_files(folder):
            parts = rel.split("/")
            rows.append({
                "path": f"{folder.name}/{rel}",
                "source": str(root),
                "speaker": parts[0] if len(parts) > 1 else None,
                "label": label,
            })
    return _table(rows, root)


def _manifest(csv_path: Path, require_labels: bool, allow_outside_paths: bool = False) -> pd.DataFrame:
    folder = csv_path.parent
    try:
        # utf-8-sig: spreadsheets often prefix a byte-order mark to the header
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            required = ["path", "label"] if require_labels else ["path"]
            missing_cols = [c for c in required if c not in header]
            if missing_cols:
                raise CorpusError(
                    f"{csv_path}: missing column(s) {missing_cols}; expected a header with "
                    f"path,label[,speaker], got {header}"
                )
            records = []
            for rec in reader:
                records.append((reader.line_num, rec))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CorpusError(f"{csv_path}: cannot read the manifest ({e})") from None

    rows, bad_label, bad_path, outside, twice = [], [], [], [], []
    real_folder = os.path.realpath(folder)
    seen: dict[str, tuple[int, str | None]] = {}  # path relative to the folder → (first line, its label)
    for line, rec in records:
        cell = (rec.get("path") or "").strip()
        raw_label = (rec.get("label") or "").strip()
        label = normalise_label(raw_label)
        if label is None and (raw_label or require_labels):
            bad_label.append(f"line {line}: {raw_label!r}")
        full = Path(cell) if Path(cell).is_absolute() else folder / cell
        rel = Path(os.path.relpath(full, folder)).as_posix()  # "./a.wav", "sub/../a.wav" and "a.wav" are one file
        # a manifest names files of its own folder: one elsewhere is more often a mistake (or another corpus) than meant.
        # Checked on the resolved path too: a symbolic link inside the folder (to a folder or a file) can lead out of it.
        real = os.path.relpath(os.path.realpath(full), real_folder)
        leaves = rel == ".." or rel.startswith("../") or real == ".." or real.startswith("../")
        if cell and not allow_outside_paths and (Path(cell).is_absolute() or leaves):
            outside.append(f"line {line}: {cell!r}")
            continue
        if not cell or not full.is_file():
            bad_path.append(f"line {line}: {cell!r}")
            continue
        if rel in seen:  # listed again: one row, unless the lines disagree on what it is
            first, first_label = seen[rel]
            if first_label != label:
                twice.append(f"{rel!r} (line {first}: {first_label}, line {line}: {label})")
            continue
        seen[rel] = (line, label)
        speaker = (rec.get("speaker") or "").strip() or None
        rows.append({
            "path": rel,
            "source": str(folder),
            "corpus": (rec.get("corpus") or "").strip() or folder.name,
            "speaker": speaker,
            "label": label,
        })
    problems = []
    if bad_label:
        problems.append(
            f"unknown label(s), expected female/f/woman or male/m/man: {listing(bad_label)}"
        )
    if bad_path:
        problems.append(f"missing file(s), relative to {folder}: {listing(bad_path)}")
    if outside:
        problems.append(
            f"path(s) absolute or outside {folder}: {listing(outside)}; paths are relative to the manifest's folder"
        )
    if twice:
        problems.append(f"file(s) listed twice with different labels: {listing(twice)}")
    if problems:
        err = CorpusError(f"{csv_path}: " + "; ".join(problems))
        err.outside_paths = bool(outside)
        raise err
    if not rows:
        raise CorpusError(f"{csv_path}: the manifest lists no files")
    return _table(rows, folder)


# -- public API -------------------------------------------------------------------------
def discover(src: str | os.PathLike, *, require_labels: bool = True, allow_outside_paths: bool = False) -> pd.DataFrame:
    """List the files of a corpus with their speaker and label.

    Layouts, detected in this order:

    1. AudioMNIST: ``<root>/<speaker>/<digit>_<speaker>_<take>.wav`` with
       ``<root>/audioMNIST_meta.txt`` (JSON: speaker id → ``{"gender": ...}``). Every
       regular file in a speaker folder is listed; ``digit``/``take`` are filled where
       the file name matches.
    2. Label folders: ``<root>/female/**`` and ``<root>/male/**``. The speaker is the
       first sub-folder under the label folder, if the file lies in one.
    3. Manifest: ``src`` is a ``.csv`` with columns ``path,label[,speaker][,corpus]``, paths
       relative to the manifest's folder (which becomes ``source``). A file listed twice is one
       row (its first line); listed with two different labels, it is an error.

    Labels are normalised case-insensitively (female/f/woman, male/m/man).

    Parameters
    ----------
    src : str or os.PathLike
        A corpus folder or a manifest ``.csv``.
    require_labels : bool
        When False, a folder matching no layout is accepted as unlabelled (every regular
        file, speaker and label None), and a manifest may omit labels.
    allow_outside_paths : bool
        When False (the default), a manifest's absolute paths and paths leading out of its folder
        (``../x.wav``) are an error; when True they are listed (``path`` relative to the manifest's
        folder, e.g. ``../x.wav``).

    Returns
    -------
    pandas.DataFrame
        Columns ``path`` (POSIX, relative to ``source``), ``source`` (absolute folder),
        ``corpus`` (the folder's name; for a manifest its ``corpus`` column where given, else
        the manifest folder's name), ``speaker`` (str or None, as the corpus names it), ``label`` ("female", "male" or None), plus ``digit`` and
        ``take`` (nullable Int64) for AudioMNIST; sorted by ``path``.

    Raises
    ------
    CorpusError
        ``src`` does not exist, matches no layout (with ``require_labels``), holds no files,
        or its labels/metadata are inconsistent, or a manifest's paths are outside its folder or
        list a file with two labels; the message names the offending items (lines of a manifest).
    """
    root = Path(os.path.abspath(src))  # absolute and without "..", as `source` promises
    if not root.exists():
        raise CorpusError(f"{root} does not exist")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise CorpusError(f"{root} is a file but not a manifest .csv; {_LAYOUTS_HELP}")
        return _manifest(root, require_labels, allow_outside_paths)
    if not root.is_dir():
        raise CorpusError(f"{root} is neither a folder nor a manifest .csv file")

    if (root / AUDIOMNIST_META).is_file():
        return _audiomnist(root)
    label_dirs = {d.name.lower(): d for d in _subdirs(root) if d.name.lower() in LABELS}
    if label_dirs:
        return _label_folders(root, dict(sorted(label_dirs.items())))
    if require_labels:
        raise CorpusError(f"{root} has no recognised labelled layout; {_LAYOUTS_HELP}")
    rows = [
        {"path": rel, "source": str(root), "speaker": None, "label": None}
        for rel in list_files(root)
    ]
    return _table(rows, root)
