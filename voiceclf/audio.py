"""Any audio file → mono float32 at ``FeatureConfig.sample_rate``, cleaned: decoding, downmix and resampling.

Decoding is done by libsndfile (through ``soundfile``): WAV (8-bit unsigned, 16/24/32-bit
int, 32-bit float, with or without extra chunks such as ``bext``), FLAC, OGG Vorbis and MP3.
Clean-up is the same for every file, so a model never sees a difference that comes from
the container rather than the voice: downmix, resample, then :mod:`voiceclf.cleaning` (DC removal,
high-pass, peak level).

Every way a file can fail becomes a typed :class:`AudioError` (:mod:`voiceclf.audio_errors`, re-exported here)
whose ``code`` is a short machine-readable reason and whose message names the file and the cause.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

# The errors live in audio_errors (with the header checks that raise them); callers know them as audio.*.
from voiceclf.audio_errors import (SF_ERRORS, AudioError, ChannelsCancelError, CorruptAudioError, EmptyAudioError, LongRecording,
                                   NotAudioError, TooBigError, TooLongError, check_header, decode_error, open_sound, read_head)
from voiceclf import truncation
from voiceclf.cleaning import BlockHighpass, clean
from voiceclf.config import FeatureConfig, FileLimits

__all__ = ["Audio", "AudioError", "ChannelsCancelError", "CorruptAudioError", "EmptyAudioError", "LongRecording", "NotAudioError",
           "TooBigError", "TooLongError", "clean", "cleaned_blocks", "load", "resample", "sniff"]


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


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """``librosa.resample(y, orig_sr=..., target_sr=..., res_type="soxr_hq")`` (soxr HQ, length fixed to
    ceil(n * ratio)), called directly: librosa's audio module costs a worker a second of numba start-up."""
    n = int(np.ceil(y.shape[-1] * (float(target_sr) / orig_sr)))
    out = soxr.resample(y, orig_sr, target_sr, quality="soxr_hq")
    out = out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))
    return np.asarray(out, dtype=y.dtype)


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
    except (*SF_ERRORS, OSError, ValueError):
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
        Has audio magic bytes but cannot be decoded, decodes to NaN/inf, or was cut off part-way
        (:mod:`voiceclf.truncation`) (code ``"corrupt"``).
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
    head, size = read_head(name, data)
    f = open_sound(name, head, data)  # opened once: the header is checked, then the same handle decodes
    with f:
        _check_whole_file(name, f, cfg, stream_above_s)
        truncation.check_container(name, f, data, size)
        y, sr = _decode_whole(name, head, f, size)
        if truncation.length_tagged_mp3(f, head, data, name):
            truncation.check_decoded_frames(name, f, y.shape[0])
    _check_finite(name, y)
    duration_s = y.shape[0] / sr
    mono = _downmix(name, y)
    if sr != cfg.sample_rate:
        mono = resample(mono, sr, cfg.sample_rate)
    return Audio(
        samples=clean(mono, cfg),
        sample_rate=cfg.sample_rate,
        source_sample_rate=int(sr),
        duration_s=float(duration_s),
    )


def _check_whole_file(name: str, f: sf.SoundFile, cfg: FeatureConfig, stream_above_s: float | None) -> None:
    """:func:`load`'s checks of the header before decoding: the file limits, then whether it is to be held whole."""
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


def _decode_whole(name: str, head: bytes, f: sf.SoundFile, size: int) -> tuple[np.ndarray, int]:
    """Every frame of an open file, (frames, channels) float32, and its rate; zero frames is an error."""
    try:
        y, sr = f.read(dtype="float32", always_2d=True), f.samplerate
    except SF_ERRORS as e:
        raise decode_error(name, head, e) from None
    if y.shape[0] == 0:
        if size > 1024:  # a header that says no frames, with data after it: the recorder never wrote the size
            raise CorruptAudioError(name, f"the header declares no audio frames, but the file holds {size} bytes: its size "
                                          f"field was never written (a recording cut off?); header {f.format}/{f.subtype}")
        raise EmptyAudioError(name, f"no audio frames (header: {f.format}/{f.subtype})")
    return y, sr


def _check_finite(name: str, y: np.ndarray) -> None:
    if not np.all(np.isfinite(y)):
        raise CorruptAudioError(name, "decoded samples contain NaN or infinity")


def _downmix(name: str, y: np.ndarray) -> np.ndarray:
    """The mean of the channels, float32; refused when the channels cancel out."""
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak > 1.0:
        # float audio far outside [-1, 1] (up to ±3e38) overflows the resampler and the filters; clean() normalises
        # the peak anyway, so scaling first changes nothing else
        y = y / np.float32(peak)
    mono = y.mean(axis=1, dtype=np.float32)
    if y.shape[1] > 1 and peak > 0 and float(np.max(np.abs(mono))) < 1e-3 * float(np.max(np.abs(y))):
        raise ChannelsCancelError(name, "its channels cancel out when mixed to mono (one of them is phase-inverted): nothing is left "
                               "to hear; fix the polarity of one channel")
    return mono


def cleaned_blocks(path: str | os.PathLike, cfg: FeatureConfig = FeatureConfig(), *, block_s: float = 30.0) -> Iterator[np.ndarray]:
    """:func:`load` one block at a time, for recordings too long to hold in memory; no peak normalisation.

    Decode ``block_s`` seconds at a time (``SoundFile.read``), downmix, resample with soxr's streaming
    resampler (the same HQ filter :func:`load` uses; chunked output equals the one-shot
    output) and high-pass with the filter state carried from block to block (:class:`voiceclf.cleaning.BlockHighpass`).
    The peak is a property of the whole recording: the caller scales by ``cfg.target_peak / peak`` once it has
    seen every block, as :func:`clean` would.

    Yields
    ------
    np.ndarray
        float64, shape (m,), consecutive stretches of the cleaned but unnormalised waveform at
        ``cfg.sample_rate``; their lengths add up to what :func:`load` returns.

    Raises
    ------
    EmptyAudioError, NotAudioError, CorruptAudioError
        As :func:`load` (a decoding failure or NaN/inf part-way through is ``corrupt``; a length-tagged MP3 cut
        off is found at its end, after the blocks before it).
    """
    name = os.fspath(path)
    head, size = read_head(name)
    sound = open_sound(name, head)
    highpass = BlockHighpass(cfg)
    with sound:
        limits = FileLimits.from_env()
        check_header(name, sound, limits, streamed=True)
        truncation.check_container(name, sound, None, size)
        whole = truncation.length_tagged_mp3(sound, head, None, name)
        # a block holds at most limits.hold_samples: many channels at a high rate get shorter blocks
        blocksize = max(1, min(int(block_s * sound.samplerate), limits.hold_samples // max(sound.channels, 1)))
        for mono in _resampled(_mono_blocks(name, head, sound, blocksize, whole), sound.samplerate, cfg.sample_rate):
            if mono.size:
                yield highpass(mono)


def _mono_blocks(name: str, head: bytes, sound: sf.SoundFile, blocksize: int, counted: bool = False) -> Iterator[np.ndarray]:
    """Each block of ``blocksize`` frames of an open file, decoded, checked and mixed to mono float32.

    Raises the typed error of a decoding failure part-way through, and EmptyAudioError after no frames at all;
    ``counted``: the header's frame count is exact (a length-tagged MP3), and fewer decoded frames are an error.
    """
    frames = 0
    while True:
        # read, not SoundFile.blocks: blocks yields whole blocks up to the header's frame count, past the end of what
        # decodes (uninitialised memory) when the header promises more (a cut-off MP3); read returns what is there.
        # Each read stops at the header's count, as blocks does, so a whole file is cut into the same blocks.
        try:
            block = sound.read(blocksize, dtype="float32", always_2d=True)
        except SF_ERRORS as e:
            raise decode_error(name, head, e) from None
        if len(block) == 0:
            break
        _check_finite(name, block)
        frames += block.shape[0]
        yield block.mean(axis=1, dtype=np.float32)
    if frames == 0:  # (a streaming resampler's flush of no input is no samples either)
        raise EmptyAudioError(name, "no audio frames")
    if counted:
        truncation.check_decoded_frames(name, sound, frames)


def _resampled(blocks: Iterator[np.ndarray], rate: int, target_rate: int) -> Iterator[np.ndarray]:
    """The mono blocks at ``target_rate`` Hz, through soxr's streaming resampler (its HQ filter, as :func:`resample`),
    whose last samples are flushed after the last block."""
    if rate == target_rate:
        yield from blocks
        return
    resampler = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ")
    for mono in blocks:
        yield resampler.resample_chunk(mono)
    yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)
