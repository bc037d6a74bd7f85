"""Was a recording cut off? What a WAV's header, an Ogg stream's last page or an MP3's length tag promise,
against what the file holds.

libsndfile decodes a truncated WAV, Ogg or MP3 to the part that is there and says nothing (a truncated FLAC it
refuses): a copy or download that stopped half-way would be scored on half a recording as if nothing were wrong.
These checks read a few bytes of the container. They are hand-written because libsndfile keeps what the header
declared only in its log text (``SoundFile.extra_info``, no API) and the standard library's ``wave`` refuses
float WAVs. A cut-off recording is ``corrupt``, as a truncated FLAC is.
"""
from __future__ import annotations

import io
import struct

import soundfile as sf

from voiceclf.audio_errors import CorruptAudioError

__all__ = ["check_container", "check_decoded_frames", "length_tagged_mp3"]

#: Data sizes a WAV writer that cannot seek back (writing to a pipe) leaves in the header: "until the end".
_WAV_SIZE_UNKNOWN = (0xFFFFFFFF, 0x7FFFFFFF)
#: The longest Ogg page (27-byte header, 255 lacing values, 255 segments of 255 bytes): the last page starts
#: within this many bytes of the end.
_OGG_MAX_PAGE = 27 + 255 + 255 * 255
#: An MP3 whose length tag counts more frames than decode, by more than this (seconds), was cut off (complete
#: files decode to exactly the tagged count; the margin allows for a decoder's rounding of the last frame).
_MP3_SLACK_S = 0.05

_CUT = "it was cut off (an interrupted copy, download or recording)"


def check_container(name: str, f: sf.SoundFile, data: bytes | None, size: int) -> None:
    """Raise CorruptAudioError when a WAV's data chunk or an Ogg stream goes on past the end of the file.

    ``f`` is the open file (its header parsed), ``data`` the file's bytes when the caller holds them (else it is
    read from ``name``), ``size`` its size in bytes. A file of no frames is left to the caller ("empty"); other
    containers pass (an MP3's length is checked once decoded: :func:`check_decoded_frames`).
    """
    if f.frames <= 0 or f.format not in ("WAV", "WAVEX", "OGG"):
        return
    with io.BytesIO(data) if data is not None else open(name, "rb") as fh:
        if f.format == "OGG":
            if not _ogg_ends_whole(fh, size):
                raise CorruptAudioError(name, f"the Ogg stream does not end (no last page): {_CUT}; "
                                              f"{f.frames / f.samplerate:.1f} s of audio are there")
            return
        declared, available = _wav_data_sizes(fh, size)
    if declared is not None and declared not in _WAV_SIZE_UNKNOWN and declared > available:
        whole_s = f.frames / f.samplerate * declared / max(available, 1)
        raise CorruptAudioError(name, f"the header declares {declared} bytes of audio but the file holds {available}: {_CUT}; "
                                      f"{f.frames / f.samplerate:.1f} s of {whole_s:.1f} s are there")


def _wav_data_sizes(fh, size: int) -> tuple[int | None, int]:
    """The data chunk's declared size and the bytes the file holds after its start (None when there is no data chunk)."""
    pos = 12  # after "RIFF", the RIFF size and "WAVE"
    while pos + 8 <= size:
        fh.seek(pos)
        chunk, length = struct.unpack("<4sI", fh.read(8))
        if chunk == b"data":
            return length, size - (pos + 8)
        pos += 8 + length + (length & 1)  # chunks are padded to an even length
    return None, 0


def _ogg_ends_whole(fh, size: int) -> bool:
    """Whether the file ends with a whole Ogg page that closes its stream (the end-of-stream flag, 0x04)."""
    start = max(0, size - _OGG_MAX_PAGE)
    fh.seek(start)
    tail = fh.read(size - start)
    at = tail.rfind(b"OggS")
    while at >= 0:  # the last capture pattern that begins a page ending exactly at the end of the file
        if len(tail) - at >= 27 and tail[at + 4] == 0:  # stream structure version 0
            n_segments = tail[at + 26]
            lacing = tail[at + 27 : at + 27 + n_segments]
            if len(lacing) == n_segments and at + 27 + n_segments + sum(lacing) == len(tail):
                return bool(tail[at + 5] & 0x04)
        at = tail.rfind(b"OggS", 0, at)
    return False


def length_tagged_mp3(f: sf.SoundFile, head: bytes, data: bytes | None, name: str) -> bool:
    """Whether ``f`` is an MP3 whose first frame carries a length tag (Xing, Info or VBRI), so that its frame count
    is the encoder's and not an estimate from the file size (which a complete VBR file can miss either way)."""
    if f.format != "MP3":
        return False
    start = 0
    if head[:3] == b"ID3" and len(head) >= 10:  # an ID3v2 tag first: its size is 4 syncsafe bytes (7 bits each)
        start = 10 + (head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9]) + (10 if head[5] & 0x10 else 0)
    if data is not None:
        frame = data[start : start + 200]
    else:
        with open(name, "rb") as fh:
            fh.seek(start)
            frame = fh.read(200)
    return any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))


def check_decoded_frames(name: str, f: sf.SoundFile, decoded: int) -> None:
    """Raise CorruptAudioError when a length-tagged MP3 (:func:`length_tagged_mp3`) decoded to fewer frames than its
    tag counts."""
    if f.frames - decoded > _MP3_SLACK_S * f.samplerate:
        raise CorruptAudioError(name, f"its length tag counts {f.frames / f.samplerate:.1f} s but only {decoded / f.samplerate:.1f} s "
                                      f"decode: {_CUT}")
