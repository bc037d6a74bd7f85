"""Any audio file → mono float32 at ``FeatureConfig.sample_rate``, cleaned.

Decoding is done by libsndfile (through ``soundfile``): WAV (8-bit unsigned, 16/24/32-bit
int, 32-bit float, with or without extra chunks such as ``bext``), FLAC, OGG Vorbis and MP3.
Clean-up is the same for every file, so a model never sees a difference that comes from
the container rather than the voice: downmix, resample, DC removal, high-pass, peak level.

Every way a file can fail becomes a typed :class:`AudioError` whose ``code`` is a short
machine-readable reason and whose message names the file and the cause.
"""
from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass

from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from voiceclf.config import FeatureConfig, FileLimits

__all__ = [
    "Audio",
    "AudioError",
    "ChannelsCancelError",
    "CorruptAudioError",
    "EmptyAudioError",
    "NotAudioError",
    "TooBigError",
    "TooLongError",
    "clean",
    "cleaned_blocks",
    "load",
    "sniff",
]

# libsndfile reports every failure as one of these; LibsndfileError derives from both.
_SF_ERRORS = (sf.SoundFileError, RuntimeError)

# Enough leading bytes for every magic-number check below.
_MAGIC_LEN = 12


# -- errors -----------------------------------------------------------------------------
class AudioError(Exception):
    """A file could not be turned into audio.

    Attributes
    ----------
    path : str
        The file concerned (as given by the caller).
    code : str
        Short machine-readable reason: ``"corrupt"``, ``"empty"``, ``"not_audio"`` or
        ``"too_long"`` for the subclasses.
    cause : str
        Human-readable cause, without the path.
    """

    code = "audio_error"

    def __init__(self, path: str | os.PathLike, cause: str) -> None:
        # Keep (path, cause) as args so the exception pickles across worker processes.
        super().__init__(os.fspath(path), cause)
        self.path = os.fspath(path)
        self.cause = cause

    def __str__(self) -> str:
        return f"{self.path}: {self.cause}"


class CorruptAudioError(AudioError):
    """The file looks like an audio container (by its magic bytes) but cannot be decoded."""

    code = "corrupt"


class EmptyAudioError(AudioError):
    """The file has zero bytes, or decodes to zero frames."""

    code = "empty"


class NotAudioError(AudioError):
    """The file is not in any format libsndfile recognises (e.g. text renamed ``.wav``)."""

    code = "not_audio"


class TooLongError(AudioError):
    """The recording is longer than ``FeatureConfig.max_duration_s`` (read from the header).

    Only :func:`load`, which holds a whole recording in memory, raises it; the jobs stream recordings
    longer than a few minutes through :func:`cleaned_blocks` instead (``voiceclf.streaming``), whatever their length.
    """

    code = "too_long"


class ChannelsCancelError(AudioError):
    """The channels are (nearly) opposite: their mean, the mono downmix, is silence although each channel is not."""

    code = "channels_cancel"


class TooBigError(AudioError):
    """The header declares more samples (frames x channels) than one file may decode (``FileLimits.decode_samples``)."""

    code = "too_big"


def check_header(name: str, f: sf.SoundFile, limits: FileLimits, streamed: bool) -> None:
    """Refuse a header that declares what no recording needs, before a sample is decoded (see FileLimits).

    ``streamed``: the recording will be read in blocks, so its length is capped by ``limits.stream_s``.
    """
    sr, frames, channels = f.samplerate, max(f.frames, 0), f.channels
    if sr < limits.min_sample_rate:
        raise CorruptAudioError(name, f"the header declares {sr} Hz, below {limits.min_sample_rate} Hz: no voice fits in it, the header "
                                      "is damaged or crafted (VOICECLF_MIN_SAMPLE_RATE)")
    if frames * channels > limits.decode_samples:
        raise TooBigError(name, f"the header declares {frames} frames x {channels} channels ({frames / sr:.0f} s at {sr} Hz), above the "
                                f"limit of {limits.decode_samples} decoded samples per file (VOICECLF_MAX_DECODE_SAMPLES)")
    if streamed and frames / sr > limits.stream_s:
        raise TooLongError(name, f"the header declares {frames / sr:.0f} s, above the limit of {limits.stream_s:g} s "
                                 "(VOICECLF_MAX_STREAM_S)")


class LongRecording(Exception):
    """:func:`load` with ``stream_above_s``: the header says the recording is longer; nothing was decoded.
    Not an error: the caller streams it instead (``voiceclf.streaming``)."""


# -- result -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Audio:
    """A decoded, cleaned recording.

    Attributes
    ----------
    samples : np.ndarray
        float32, shape (n,), mono, at ``sample_rate``; peak amplitude ``target_peak``
        unless the recording is silent.
    sample_rate : int
        Rate of ``samples``, in Hz (``FeatureConfig.sample_rate``).
    source_sample_rate : int
        Rate of the file as stored, in Hz.
    duration_s : float
        Duration of the original recording, in seconds (decoded frames / source rate).
    """

    samples: np.ndarray
    sample_rate: int
    source_sample_rate: int
    duration_s: float


# -- helpers ----------------------------------------------------------------------------
def _looks_like_audio_container(head: bytes) -> bool:
    """Whether the leading bytes carry the magic of a container this module decodes.

    Used only to tell "audio, but damaged" (corrupt) from "not audio at all" once
    libsndfile has refused a file.
    """
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return True
    if head[:4] in (b"fLaC", b"OggS") or head[:3] == b"ID3":
        return True
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        # MPEG audio frame sync (11 set bits); reject the reserved version (01) and
        # layer (00) codes so that arbitrary 0xFFEx bytes are less likely to match.
        version, layer = (head[1] >> 3) & 0b11, (head[1] >> 1) & 0b11
        return version != 0b01 and layer != 0b00
    return False


def _sf_error(path: str, head: bytes, err: Exception) -> AudioError:
    """Map a soundfile/libsndfile failure to the typed error, by the file's magic bytes."""
    # soundfile's message starts with "Error opening <BytesIO ...>:"; keep libsndfile's reason.
    reason = str(err).rsplit(": ", 1)[-1] if "Error opening" in str(err) else str(err)
    if "does not exist or is not a regular file" in reason:
        # libsndfile's words when its MP3 decoder finds no whole frame in what it was given (a truncated or
        # 60-byte MP3): the file exists, it is only too short or damaged to hold a frame
        reason = "no complete audio frame in it: the file is truncated or damaged"
    if _looks_like_audio_container(head):
        return CorruptAudioError(path, f"looks like audio but cannot be decoded ({reason})")
    return NotAudioError(
        path, f"not a recognised audio format (expected WAV, FLAC, OGG or MP3; libsndfile: {reason})"
    )


#: butter(4, 50 Hz, "highpass", fs 16 kHz, output="sos") and its sosfilt_zi, as scipy.signal gives them (every
#: digit: ``repr`` round-trips a float exactly; tests/test_audio.py checks them against scipy.signal).
_HIGHPASS_KNOWN = {
    (16000, 50.0, 4): (
        [[0.9746715011476549, -1.9493430022953098, 0.9746715011476549, 1.0, -1.9639893509038986, 0.9643680015329213],
         [1.0, -2.0, 1.0, 1.0, -1.9847024413583025, 0.985085085402425]],
        [[-0.9746715011476881, 0.9746715011476869], [-0.0, 0.0]],
    ),
}


@functools.lru_cache(maxsize=16)
def _highpass_sos(rate: int, cutoff_hz: float, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Butterworth high-pass as second-order sections and their unit-step initial state; cached
    since every file reuses them (computing the state took a third of the clean-up time).

    The default config's are written out: scipy.signal's import costs a worker ~1.2 s of CPU (it imports
    scipy.stats and parses docstrings), as much as a few hundred short files.
    """
    if (rate, cutoff_hz, order) in _HIGHPASS_KNOWN:
        sos, zi = _HIGHPASS_KNOWN[(rate, cutoff_hz, order)]
        return np.array(sos), np.array(zi)
    import scipy.signal  # here, not at the top: a job's parent never needs it

    sos = scipy.signal.butter(order, cutoff_hz, btype="highpass", fs=rate, output="sos")
    return sos, scipy.signal.sosfilt_zi(sos)


@functools.lru_cache(maxsize=1)
def _sosfilt_kernel():
    """scipy.signal.sosfilt's compiled loop (``scipy.signal._sosfilt._sosfilt``), loaded without importing the
    scipy.signal package; None when it cannot be (another scipy layout): :func:`_sosfilt` then calls scipy.signal.sosfilt."""
    import sys

    name = "scipy.signal._sosfilt"
    try:
        if name not in sys.modules:
            import importlib.machinery
            import importlib.util

            import scipy

            folder = os.path.join(os.path.dirname(scipy.__file__), "signal")
            path = next(os.path.join(folder, "_sosfilt" + sfx) for sfx in importlib.machinery.EXTENSION_SUFFIXES
                        if os.path.exists(os.path.join(folder, "_sosfilt" + sfx)))
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[name] = module  # scipy.signal, imported later, takes this one instead of loading it again
        return sys.modules[name]._sosfilt
    except Exception:  # StopIteration, ImportError, AttributeError: not the layout of scipy 1.17
        return None


def _sosfilt(sos: np.ndarray, x: np.ndarray, zi: np.ndarray, overwrite_x: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.sosfilt(sos, x, zi=zi)`` of a 1-D float64 signal: the same compiled loop, without the package import.

    ``overwrite_x``: a C-contiguous float64 ``x`` the caller no longer needs is filtered in place, not copied first.
    """
    kernel = _sosfilt_kernel()
    if kernel is None:
        import scipy.signal

        return scipy.signal.sosfilt(sos, x, zi=zi)
    out = np.array(x, np.float64, order="C", copy=None if overwrite_x else True).reshape(1, -1)  # filtered in place
    state = np.array(zi, np.float64, order="C").reshape(1, len(sos), 2)
    kernel(np.asarray(sos, np.float64), out, state)
    return out[0], state[0]


def clean(y: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """Remove DC and rumble, then normalise the peak level.

    Parameters
    ----------
    y : np.ndarray
        Mono waveform, shape (n,), at ``cfg.sample_rate`` Hz, finite values.
    cfg : FeatureConfig
        Uses ``highpass_hz`` (Hz), ``highpass_order``, ``silence_peak_dbfs`` (dBFS) and
        ``target_peak`` (linear amplitude).

    Returns
    -------
    np.ndarray
        float32, shape (n,). The peak is ``cfg.target_peak``, except when the cleaned peak
        is below ``cfg.silence_peak_dbfs``: then the level is left as is, because
        amplifying a silent recording would turn its noise floor into "speech" for voice
        activity detection.
    """
    x = np.array(y, dtype=np.float64)  # this function's own copy; filter in float64: the poles sit close to 1
    if x.ndim != 1:
        raise ValueError(f"clean: expected a 1-D mono waveform, got shape {x.shape}")
    if x.size == 0:
        return x.astype(np.float32)
    # Subtracting the mean first spares the causal filter a large start-up step on DC.
    x -= x.mean()
    sos, zi = _highpass_sos(cfg.sample_rate, float(cfg.highpass_hz), cfg.highpass_order)
    # Start the filter in the steady state for the first sample, as if the signal had always
    # been there: a zero initial state would add a start-up step that leaves a DC residue.
    x, _ = _sosfilt(sos, x, zi=zi * x[0], overwrite_x=True)
    peak = float(max(x.max(), -x.min()))  # max |x| without an array of |x|
    if peak > 0 and 20.0 * np.log10(peak) >= cfg.silence_peak_dbfs:
        x *= cfg.target_peak / peak
    return x.astype(np.float32)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """``librosa.resample(y, orig_sr=..., target_sr=..., res_type="soxr_hq")`` (soxr HQ, length fixed to
    ceil(n * ratio)), called directly: librosa's audio module costs a worker a second of numba start-up."""
    n = int(np.ceil(y.shape[-1] * (float(target_sr) / orig_sr)))
    out = soxr.resample(y, orig_sr, target_sr, quality="soxr_hq")
    out = out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))
    return np.asarray(out, dtype=y.dtype)


# -- public API -------------------------------------------------------------------------
def sniff(path_or_bytes: str | os.PathLike | bytes) -> bool:
    """Whether libsndfile can open this as audio, judged from the header only.

    Decides "audio or not" by content, not by file extension. Cheap: only the header
    is parsed (``soundfile.info``), no samples are decoded.

    Parameters
    ----------
    path_or_bytes : str, os.PathLike or bytes
        A file path, or the file's contents.

    Returns
    -------
    bool
        True when ``soundfile.info`` succeeds; False for empty, unreadable, missing or
        unrecognised input (never raises for those).
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        if len(path_or_bytes) == 0:
            return False
        source: str | io.BytesIO = io.BytesIO(bytes(path_or_bytes))
    else:
        source = os.fspath(path_or_bytes)
    try:
        sf.info(source)
    except (*_SF_ERRORS, OSError, ValueError):
        return False
    return True


def load(
    path: str | os.PathLike,
    cfg: FeatureConfig = FeatureConfig(),
    *,
    data: bytes | None = None,
    stream_above_s: float | None = None,
) -> Audio:
    """Decode an audio file to mono float32 at ``cfg.sample_rate`` and clean it.

    Steps: decode (libsndfile, float32) → downmix (mean of channels) → resample to
    ``cfg.sample_rate`` (soxr HQ) → :func:`clean` (DC removal, Butterworth high-pass,
    peak normalisation).

    Parameters
    ----------
    path : str or os.PathLike
        The file. When ``data`` is given it is only used in error messages.
    cfg : FeatureConfig
        Uses ``sample_rate`` (Hz), ``max_duration_s`` (s) and the fields used by :func:`clean`.
    data : bytes, optional
        The file's contents, when the caller has read them already (e.g. to hash them);
        decoded from memory instead of reading the file again.
    stream_above_s : float, optional
        Raise :class:`LongRecording` instead of decoding when the header says the recording is longer
        (the caller streams it): the header is then read once, by the handle that decodes the rest.

    Returns
    -------
    Audio

    Raises
    ------
    EmptyAudioError
        Zero bytes, or zero decoded frames (code ``"empty"``).
    NotAudioError
        Not a format libsndfile recognises (code ``"not_audio"``).
    CorruptAudioError
        Has audio magic bytes but cannot be decoded, or decodes to NaN/inf (code ``"corrupt"``).
    TooLongError
        Header duration above ``cfg.max_duration_s`` (code ``"too_long"``); checked before
        decoding so a huge file costs no memory.
    TooBigError
        The header declares more samples than ``FileLimits`` allow (code ``"too_big"``); past
        ``FileLimits.hold_samples`` only when ``stream_above_s`` is None (else LongRecording: stream it).
    OSError
        ``data`` is None and the file cannot be read (missing, a folder, no permission).
    """
    name = os.fspath(path)
    if data is None:
        size = os.path.getsize(name)
        with open(name, "rb") as f:
            head = f.read(_MAGIC_LEN)
    else:
        size = len(data)
        head = bytes(data[:_MAGIC_LEN])
    if size == 0:
        raise EmptyAudioError(name, "file is empty (0 bytes)")

    def source() -> str | io.BytesIO:
        # A fresh stream for each open: libsndfile leaves a BytesIO positioned anywhere.
        return name if data is None else io.BytesIO(data)

    try:
        f = sf.SoundFile(source())  # opened once: the header is checked, then the same handle decodes
    except _SF_ERRORS as e:
        raise _sf_error(name, head, e) from None
    with f:
        limits = FileLimits.from_env()
        check_header(name, f, limits, streamed=False)
        duration = f.frames / f.samplerate
        # more samples than one worker should hold (many channels at a high rate): streamed in bounded blocks instead
        too_many = f.frames * f.channels > limits.hold_samples
        if stream_above_s is not None and (duration > stream_above_s or too_many):
            raise LongRecording(name)
        if too_many:
            raise TooBigError(name, f"{f.frames} frames x {f.channels} channels are more than {limits.hold_samples} samples to hold "
                                    "at once (VOICECLF_MAX_HOLD_SAMPLES); stream it (audio.cleaned_blocks)")
        if duration > cfg.max_duration_s:
            raise TooLongError(
                name,
                f"duration {duration:.1f} s is above the limit of {cfg.max_duration_s:g} s "
                "(FeatureConfig.max_duration_s)",
            )
        try:
            y, sr = f.read(dtype="float32", always_2d=True), f.samplerate
        except _SF_ERRORS as e:
            raise _sf_error(name, head, e) from None
        if y.shape[0] == 0:
            if size > 1024:  # a header that says no frames, with data after it: the recorder never wrote the size
                raise CorruptAudioError(name, f"the header declares no audio frames, but the file holds {size} bytes: its size "
                                              f"field was never written (a recording cut off?); header {f.format}/{f.subtype}")
            raise EmptyAudioError(name, f"no audio frames (header: {f.format}/{f.subtype})")
    if not np.all(np.isfinite(y)):
        raise CorruptAudioError(name, "decoded samples contain NaN or infinity")

    duration_s = y.shape[0] / sr
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak > 1.0:
        # float audio far outside [-1, 1] (up to ±3e38) overflows the resampler and the filters; clean() normalises
        # the peak anyway, so scaling first changes nothing else
        y = y / np.float32(peak)
    mono = y.mean(axis=1, dtype=np.float32)
    if y.shape[1] > 1 and peak > 0 and float(np.max(np.abs(mono))) < 1e-3 * float(np.max(np.abs(y))):
        raise ChannelsCancelError(name, "its channels cancel out when mixed to mono (one of them is phase-inverted): nothing is left "
                               "to hear; fix the polarity of one channel")
    if sr != cfg.sample_rate:
        mono = resample(mono, sr, cfg.sample_rate)
    return Audio(
        samples=clean(mono, cfg),
        sample_rate=cfg.sample_rate,
        source_sample_rate=int(sr),
        duration_s=float(duration_s),
    )


def cleaned_blocks(path: str | os.PathLike, cfg: FeatureConfig = FeatureConfig(), *, block_s: float = 30.0) -> Iterator[np.ndarray]:
    """:func:`load` one block at a time, for recordings too long to hold in memory; no peak normalisation.

    Decode ``block_s`` seconds at a time (``SoundFile.blocks``), downmix, resample with soxr's streaming
    resampler (the same HQ filter :func:`load` uses; chunked output equals the one-shot
    output) and high-pass with the filter state carried from block to block. The whole-file mean
    :func:`clean` subtracts is unknown until the end: the first block's mean is subtracted instead, and
    what remains is a constant the high-pass removes (its initial state is the steady state of the first
    sample, DC included). The peak is a property of the whole recording: the caller scales by
    ``cfg.target_peak / peak`` once it has seen every block, as :func:`clean` would.

    Yields
    ------
    np.ndarray
        float64, shape (m,), consecutive stretches of the cleaned but unnormalised waveform at
        ``cfg.sample_rate``; their lengths add up to what :func:`load` returns.

    Raises
    ------
    EmptyAudioError, NotAudioError, CorruptAudioError
        As :func:`load` (a decoding failure or NaN/inf part-way through is ``corrupt``).
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        head = f.read(_MAGIC_LEN)
    if not head:
        raise EmptyAudioError(name, "file is empty (0 bytes)")
    try:
        sound = sf.SoundFile(name)
    except _SF_ERRORS as e:
        raise _sf_error(name, head, e) from None
    sos, zi = _highpass_sos(cfg.sample_rate, float(cfg.highpass_hz), cfg.highpass_order)
    state, dc, frames = None, 0.0, 0
    with sound:
        limits = FileLimits.from_env()
        check_header(name, sound, limits, streamed=True)
        sr = sound.samplerate
        resampler = soxr.ResampleStream(sr, cfg.sample_rate, 1, dtype="float32", quality="HQ") if sr != cfg.sample_rate else None
        # a block holds at most limits.hold_samples: many channels at a high rate get shorter blocks
        blocksize = max(1, min(int(block_s * sr), limits.hold_samples // max(sound.channels, 1)))
        blocks = sound.blocks(blocksize=blocksize, dtype="float32", always_2d=True)
        while True:
            try:
                block = next(blocks, None)
            except _SF_ERRORS as e:
                raise _sf_error(name, head, e) from None
            if block is not None:
                if not np.all(np.isfinite(block)):
                    raise CorruptAudioError(name, "decoded samples contain NaN or infinity")
                frames += block.shape[0]
                mono = block.mean(axis=1, dtype=np.float32)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono)
            elif resampler is not None:  # flush the resampler's last samples
                mono = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            else:
                mono = np.zeros(0, np.float32)
            if mono.size:
                x = np.asarray(mono, dtype=np.float64)
                if state is None:
                    dc = x.mean()
                    state = zi * (x[0] - dc)
                x, state = _sosfilt(sos, x - dc, zi=state)
                yield x
            if block is None:
                break
    if frames == 0:
        raise EmptyAudioError(name, "no audio frames")
