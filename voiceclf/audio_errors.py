"""How a file fails to be audio: the typed :class:`AudioError` family, the header limits checked before a
sample is decoded, and libsndfile's refusals told apart (damaged audio or not audio at all) by magic bytes.

Every error has a short machine-readable ``code`` (the report's ``error`` column) and a message that names the
file and the cause.
"""
from __future__ import annotations

import io
import os

import soundfile as sf

from voiceclf.config import FileLimits

__all__ = ["AudioError", "ChannelsCancelError", "CorruptAudioError", "EmptyAudioError", "LongRecording", "NotAudioError", "TooBigError",
           "TooLongError", "check_header", "decode_error", "looks_like_audio_container", "open_sound", "read_head"]

# libsndfile reports every failure as one of these; LibsndfileError derives from both.
SF_ERRORS = (sf.SoundFileError, RuntimeError)

# Enough leading bytes for every magic-number check below.
MAGIC_LEN = 12


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

    Only :func:`voiceclf.audio.load`, which holds a whole recording in memory, raises it; the jobs stream recordings
    longer than a few minutes through :func:`voiceclf.audio.cleaned_blocks` instead (``voiceclf.streaming``), whatever their length.
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
    """:func:`voiceclf.audio.load` with ``stream_above_s``: the header says the recording is longer; nothing was decoded.
    Not an error: the caller streams it instead (``voiceclf.streaming``)."""


def looks_like_audio_container(head: bytes) -> bool:
    """Whether the leading bytes carry the magic of a container :mod:`voiceclf.audio` decodes.

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


def decode_error(path: str, head: bytes, err: Exception) -> AudioError:
    """Map a soundfile/libsndfile failure to the typed error, by the file's magic bytes."""
    # soundfile's message starts with "Error opening <BytesIO ...>:"; keep libsndfile's reason.
    reason = str(err).rsplit(": ", 1)[-1] if "Error opening" in str(err) else str(err)
    if "does not exist or is not a regular file" in reason:
        # libsndfile's words when its MP3 decoder finds no whole frame in what it was given (a truncated or
        # 60-byte MP3): the file exists, it is only too short or damaged to hold a frame
        reason = "no complete audio frame in it: the file is truncated or damaged"
    if looks_like_audio_container(head):
        return CorruptAudioError(path, f"looks like audio but cannot be decoded ({reason})")
    return NotAudioError(
        path, f"not a recognised audio format (expected WAV, FLAC, OGG or MP3; libsndfile: {reason})"
    )


def read_head(name: str, data: bytes | None = None) -> tuple[bytes, int]:
    """The first ``MAGIC_LEN`` bytes of a file (of ``data`` when given) and its size in bytes.

    Raises EmptyAudioError for zero bytes; OSError when ``data`` is None and the file cannot be read.
    """
    if data is None:
        size = os.path.getsize(name)
        with open(name, "rb") as f:
            head = f.read(MAGIC_LEN)
    else:
        size = len(data)
        head = bytes(data[:MAGIC_LEN])
    if size == 0:
        raise EmptyAudioError(name, "file is empty (0 bytes)")
    return head, size


def open_sound(name: str, head: bytes, data: bytes | None = None) -> sf.SoundFile:
    """``soundfile.SoundFile`` of the file (of ``data`` when given), a refusal raised as the typed error."""
    try:
        return sf.SoundFile(name if data is None else io.BytesIO(data))
    except SF_ERRORS as e:
        raise decode_error(name, head, e) from None
