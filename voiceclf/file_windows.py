"""Files → windows in batches: the unit of work a parallel worker runs, shared by featurize and score.

A worker gets a batch of files (never one tiny task per file) and returns plain arrays; a file
that cannot be read becomes a result with an error code instead of an exception, so one bad
file never stops a batch.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import stat
import warnings
import dataclasses
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from voiceclf import audio, features, safeio, streaming, vad
from voiceclf.config import FeatureConfig

_log = logging.getLogger("voiceclf")


@dataclass
class Item:
    """One input file: where it is and what is known about it."""

    path: str  # relative to source
    source: str
    corpus: str = ""  # the corpus the file belongs to (its source folder's name, or a manifest's corpus column)
    speaker: str | None = None
    label: str | None = None
    sha256: str | None = None  # filled in by the worker when not known yet
    variant: int = 0  # 0: the recording itself; k > 0: its k-th augmented variant (training data only)

    @property
    def abspath(self) -> str:
        return os.path.join(self.source, self.path)

    @property
    def on_disk(self) -> str | bytes:
        """The name to open: ``abspath`` with the bytes that are not UTF-8 restored (see safeio.name_as_text)."""
        return safeio.name_on_disk(self.abspath)


@dataclass
class Result:
    """What a worker made of one file: its windows (model input, :class:`voiceclf.features.Windows`), or an error
    code and message and no windows."""

    item: Item
    windows: features.Windows | None = None
    source_sample_rate: int | None = None
    duration_s: float | None = None
    error: str | None = None  # machine-readable code: corrupt, empty, not_audio, too_long, no_speech, ...
    message: str = ""

    @property
    def n_windows(self) -> int:
        return 0 if self.windows is None else len(self.windows)


def window_rows(results: list[Result]) -> dict[str, np.ndarray]:
    """One row per window of ``results`` (files with windows), as columns: the shard schema's columns but the features
    (the file's fields repeated over its windows, the window's index, offset and speech seconds)."""
    counts = [r.n_windows for r in results]
    rep = lambda values: np.repeat(np.asarray(values, dtype=object), counts)  # noqa: E731
    return {
        "path": rep([r.item.path for r in results]),
        "source": rep([r.item.source for r in results]),
        "corpus": rep([r.item.corpus for r in results]),
        "sha256": rep([r.item.sha256 for r in results]),
        "speaker": rep([r.item.speaker for r in results]),
        "label": rep([r.item.label for r in results]),
        "window": np.concatenate([np.arange(c, dtype=np.int32) for c in counts]),
        "offset_s": np.concatenate([r.windows.offsets_s for r in results]),
        "speech_s": np.concatenate([r.windows.speech_s for r in results]),
        "source_sample_rate": np.repeat([r.source_sample_rate for r in results], counts).astype(np.int32),
        "variant": np.repeat([r.item.variant for r in results], counts).astype(np.int8),
    }


def not_a_regular_file(path: str) -> str | None:
    """What ``path`` (links followed) is when it exists but is neither a regular file nor a folder, else None.

    Reading a FIFO blocks until someone writes to it and a device such as /dev/zero never ends: either would
    hang the batch, so such entries are reported without being opened. ``os.stat`` opens nothing.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing, a broken or looping link: reading it fails and says why
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def sha256_file(path: str) -> str:
    """The file's sha256, read in 1-MiB blocks; OSError for what cannot be read, or must not be (see not_a_regular_file)."""
    if (kind := not_a_regular_file(path)) is not None:
        raise OSError(errno.EINVAL, f"{kind}, not a regular file", path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def featurize_file(item: Item, cfg: FeatureConfig, variants: int = 0) -> list[Result]:
    """Decode one file and cut its windows: one result, plus ``variants`` augmented variants of a labelled file.

    Every failure becomes an error result; variants are only made of a file that gave windows, and not
    of a long one (streamed: its whole waveform is never in memory; see voiceclf.streaming).
    """
    result, samples = _featurize_one(item, cfg)
    if variants <= 0 or result.error or item.label is None or samples is None:
        return [result]
    from voiceclf import augment# scipy.signal at import: here, so a job's parent never loads it

    out = [result]
    seed = int(item.sha256[:16], 16)
    for k, y in enumerate(augment.variants(samples, cfg, variants, seed), start=1):
        wins = windows_of(y, cfg)
        if len(wins):  # a variant drowned in noise adds nothing; the original still stands for the file
            out.append(Result(dataclasses.replace(item, variant=k), windows=wins, source_sample_rate=result.source_sample_rate, duration_s=result.duration_s))
    return out


#: Files up to this size are read whole before their header is looked at: a recording longer than
#: ``streaming.STREAM_ABOVE_S`` in fewer bytes costs no more memory than these bytes.
READ_WHOLE_BYTES = 16 << 20


def _featurize_one(item: Item, cfg: FeatureConfig, gate: bool = True, max_windows: int | None = streaming.MAX_WINDOWS) -> tuple[Result, np.ndarray | None]:
    """The file's result and its cleaned waveform (None when it could not be decoded, or was streamed).

    ``gate=False`` leaves the speech gate to the caller (:func:`_gate`, several files at once) for a result with windows.
    """
    if (kind := not_a_regular_file(item.on_disk)) is not None:
        return Result(item, error="not_a_file", message=f"{item.abspath}: {kind}, not a regular file (not read)"), None
    try:  # a big file's header is read first, so a long recording is never read whole, not even to hash it
        big = os.path.getsize(item.on_disk) > READ_WHOLE_BYTES
    except OSError:
        big = False  # reading it says why it cannot be read
    if big and streaming.is_long(item.on_disk):
        return _featurize_long(item, cfg, max_windows), None
    try:
        with open(item.on_disk, "rb") as f:
            data = f.read()
    except OSError as e:
        return Result(item, **_unreadable(item.on_disk, e, item.abspath)), None
    item.sha256 = item.sha256 or hashlib.sha256(data).hexdigest()
    try:  # a small file's header is read by the handle that decodes it: one libsndfile open per file, not two
        decoded = audio.load(item.abspath, cfg, data=data, stream_above_s=streaming.STREAM_ABOVE_S)
    except audio.LongRecording:  # a small file can hold a long recording (compressed, or silence in FLAC)
        return _featurize_long(item, cfg, max_windows), None
    except audio.AudioError as e:
        return Result(item, error=e.code, message=str(e)), None
    except Exception as e:  # a decoder bug must not stop the batch either; keep the cause
        return Result(item, error="decode_failed", message=f"{item.abspath}: {type(e).__name__}: {e}"), None
    wins = windows_of(decoded.samples, cfg)
    why = (vad.why_not_speech(decoded.samples, cfg, _first_loud(wins, cfg)) if gate else None) if len(wins) else NO_VOICED_REGION
    result = Result(item, windows=wins, source_sample_rate=decoded.source_sample_rate, duration_s=decoded.duration_s)
    return _no_speech(result, why), decoded.samples


def _featurize_long(item: Item, cfg: FeatureConfig, max_windows: int | None = streaming.MAX_WINDOWS) -> Result:
    """A recording longer than streaming.STREAM_ABOVE_S: streamed, never read whole (not even to hash it), at
    most ``max_windows`` windows evenly spread over its speech (all of them for None, as scoring asks)."""
    try:
        item.sha256 = item.sha256 or sha256_file(item.on_disk)
        # speaker-embedding windows come back embedded: a long file's mel windows never pile up in the worker
        wins, survey = streaming.windows(item.on_disk, cfg, max_windows=max_windows, embed=cfg.is_embedding)
    except OSError as e:
        return Result(item, **_unreadable(item.on_disk, e, item.abspath))
    except audio.AudioError as e:
        return Result(item, error=e.code, message=str(e))
    except Exception as e:  # as in _featurize_one: one file never stops the batch
        return Result(item, error="decode_failed", message=f"{item.abspath}: {type(e).__name__}: {e}")
    why = NO_VOICED_REGION
    if len(wins):
        try:  # the blocks again, scaled as the windows' were; read only until enough speech is found
            blocks = (x * np.float32(survey.gain) for x in audio.cleaned_blocks(item.on_disk, cfg))
            why = vad.why_not_speech_in(blocks, cfg)
        except (OSError, audio.AudioError) as e:  # changed or removed since the windows were read
            return Result(item, error="decode_failed", message=f"{item.abspath}: {e}")
    return _no_speech(Result(item, windows=wins, source_sample_rate=survey.source_sample_rate, duration_s=survey.duration_s), why)


NO_VOICED_REGION = "no voiced region found (silent or too quiet)"


def _first_loud(wins: features.Windows, cfg: FeatureConfig) -> int:
    """Where a recording's first voiced region begins, in samples: its first window's start (the speech gate reads from there)."""
    return int(round(float(wins.offsets_s[0]) * cfg.sample_rate)) if len(wins) else 0


def _no_speech(result: Result, why: str | None) -> Result:
    """``result`` as a ``no_speech`` result without windows when there is a reason ``why``; else unchanged."""
    if why:
        result.windows, result.error, result.message = None, "no_speech", f"{result.item.abspath}: {why}"
    return result


def windows_of(y: np.ndarray, cfg: FeatureConfig) -> features.Windows:
    """A cleaned waveform's windows: model input for the CNN, mel windows for the speaker encoder."""
    if cfg.is_embedding:
        from voiceclf import embedding

        return embedding.mel_windows(y, cfg)
    return features.extract(y, cfg)


def _unreadable(path: str | bytes, e: OSError, shown: str | None = None) -> dict:
    """The error code and message of an entry that cannot be opened as a file (named ``shown`` in the message)."""
    out = _unreadable_why(path, e)
    if shown is not None and path != shown:
        out["message"] = out["message"].replace(os.fsdecode(path), shown, 1)
    return out


def _unreadable_why(path: str | bytes, e: OSError) -> dict:
    path = os.fsdecode(path)
    if os.path.islink(path):
        target = os.readlink(path)
        if e.errno == errno.ELOOP:
            return dict(error="link_loop", message=f"{path}: symbolic link loop ({target} leads back to itself)")
        if not os.path.exists(path):
            return dict(error="broken_link", message=f"{path}: broken symbolic link (its target {target} does not exist)")
        if os.path.isdir(path):
            real, here = os.path.realpath(path), os.path.realpath(os.path.dirname(path))
            if os.path.commonpath([real, here]) == real:
                return dict(error="link_loop", message=f"{path}: symbolic link loop (it leads back to {real}, a folder above it)")
            return dict(error="folder_link", message=f"{path}: symbolic link to the folder {target}, not followed (links can loop); pass {real} as a source to include it")
    if os.path.isdir(path):
        try:
            os.listdir(path)
            reason = e.strerror or str(e)
        except OSError as le:
            reason = le.strerror or str(le)
        return dict(error="unreadable", message=f"{path}: folder cannot be listed ({reason})")
    return dict(error="unreadable", message=f"{path}: {e.strerror or e}")


@contextlib.contextmanager
def warnings_naming(path: str):
    """Python warnings raised while ``path`` is decoded (numpy overflow on extreme samples, a decoder's note) as one
    log line each that names the file: printed by a worker as they are, they named no file and took two lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        text = " ".join(str(w.message).split())
        _log.warning("%s: %s: %s (at %s:%d)", safeio.as_text(path).replace("\n", "\\n"), w.category.__name__, text, os.path.basename(w.filename), w.lineno)


def featurize_batch(items: list[Item], cfg: FeatureConfig, variants: int = 0, max_windows: int | None = streaming.MAX_WINDOWS) -> list[Result]:
    """Worker entry point: the results of every item, in order (variants follow their original).

    ``max_windows`` caps a streamed long recording's windows (None: all of them, for scoring's turns).

    BLAS runs single-threaded here: parallelism comes from the worker processes, and a fixed
    thread count keeps sums in one order, so features are bit-identical for any --jobs or backend.
    The speaker encoder runs once over the mel windows of the whole batch: an LSTM is far cheaper
    per window on a batch of hundreds than on a file's one or two. Mel windows are embedded
    whenever EMBED_EVERY of them are waiting, so a batch of long files never holds all of theirs at once.
    """
    with _threadpools().limit(limits=1):
        results, waiting, ungated = [], [], []
        for it in items:
            with warnings_naming(it.abspath):
                if variants > 0 and it.label is not None:  # its variants wait for the gate's verdict on the recording
                    out = featurize_file(it, cfg, variants)
                else:
                    r, samples = _featurize_one(it, cfg, gate=False, max_windows=max_windows)
                    out = [r]
                    if r.n_windows and samples is not None:
                        ungated.append((r, samples))
            for r in out:
                results.append(r)
                if cfg.is_embedding and r.n_windows and r.windows.features.ndim == 3:  # mel windows (a long file's are embedded)
                    waiting.append(r)
            if ungated and sum(len(y) for _, y in ungated) >= GATE_EVERY:
                _gate(ungated, cfg)
            if waiting and sum(r.n_windows for r in waiting) >= EMBED_EVERY:
                _gate(ungated, cfg)  # a file the gate rejects is not embedded
                _embed(waiting, cfg)
        _gate(ungated, cfg)
        _embed(waiting, cfg)
        for r in results:  # a link target or OS error inside a message may hold a name that is not UTF-8
            r.message = safeio.as_text(r.message)
        return results


@functools.lru_cache(maxsize=1)
def _threadpools() -> ThreadpoolController:
    """The BLAS/OpenMP libraries of this process, found once: ``threadpool_limits`` searched them on every batch
    (~3 ms each, a tenth of a batch of short clips)."""
    return ThreadpoolController()


#: Samples of cleaned recordings (16 kHz: two minutes) a worker keeps for the speech gate before it runs.
GATE_EVERY = 120 * 16000


def _gate(pending: list[tuple[Result, np.ndarray]], cfg: FeatureConfig) -> None:
    """The speech gate over these results' recordings, in one :func:`vad.why_not_speech_many` pass; empties the list.

    A recording that holds no voice loses its windows and becomes a ``no_speech`` result, as in :func:`_featurize_one`.
    """
    if not pending:
        return
    starts = [_first_loud(r.windows, cfg) for r, _ in pending]
    for (r, _), why in zip(pending, vad.why_not_speech_many([y for _, y in pending], cfg, starts)):
        _no_speech(r, why)
    pending.clear()


#: Mel windows (25.6 kB each) a worker lets wait for the speaker encoder before it runs.
EMBED_EVERY = 2048


def _embed(results: list[Result], cfg: FeatureConfig) -> None:
    """Replace the mel windows of these results by their embeddings, in one encoder pass; empties the list."""
    results[:] = [r for r in results if r.windows is not None]  # the speech gate may have emptied some
    if not results:
        return
    from voiceclf import embedding

    for r, w in zip(results, embedding.embed_all([r.windows for r in results], cfg)):
        r.windows = w
    results.clear()


def batches(items: list, n_jobs: int, max_size: int = 32) -> list[list]:
    """Split items into batches: several per worker for load balance, none larger than max_size."""
    workers = max(1, n_jobs if n_jobs > 0 else (os.cpu_count() or 1))
    size = int(np.clip(len(items) // (workers * 4) or 1, 1, max_size))
    return [items[i : i + size] for i in range(0, len(items), size)]
