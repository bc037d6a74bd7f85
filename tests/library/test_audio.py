"""voiceclf.audio: every supported container decodes to the same clean mono signal; every
bad input becomes a typed AudioError naming the file."""
from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest
import soundfile as sf

from voiceclf import audio, cleaning
from voiceclf.config import FeatureConfig

CFG = FeatureConfig()
DUR = 0.5  # seconds of test signal


def voice_like(sr: int, channels: int = 1, dc: float = 0.0, rumble: float = 0.0) -> np.ndarray:
    """0.5 s of a 150 Hz tone with two harmonics, optionally over DC and 20 Hz rumble."""
    t = np.arange(int(DUR * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 150 * t) + 0.1 * np.sin(2 * np.pi * 300 * t) + 0.05 * np.sin(2 * np.pi * 450 * t)
    x = x + dc + rumble * np.sin(2 * np.pi * 20 * t)
    if channels == 1:
        return x
    # channels differ in level so a "take channel 0" bug would show in the peak/energy
    return np.stack([x * (1.0 - 0.3 * c) for c in range(channels)], axis=1)


def write(path, x, sr, fmt="WAV", subtype="PCM_16"):
    sf.write(path, x, sr, format=fmt, subtype=subtype)
    return path


def band_energy(y: np.ndarray, sr: int, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(len(y), 1 / sr)
    return float(spec[(f >= lo) & (f < hi)].sum())


def rumble_ratio_db(y: np.ndarray, sr: int) -> float:
    """Energy below 40 Hz relative to the voice band, in dB (independent of overall level)."""
    return 10 * np.log10(band_energy(y, sr, 0, 40) / band_energy(y, sr, 100, 500))


def assert_clean(a: audio.Audio, source_sr: int) -> None:
    assert isinstance(a, audio.Audio)
    assert a.samples.dtype == np.float32 and a.samples.ndim == 1
    assert a.sample_rate == CFG.sample_rate == 16000
    assert a.source_sample_rate == source_sr
    assert a.duration_s == pytest.approx(DUR, rel=0.01)
    assert len(a.samples) == pytest.approx(DUR * CFG.sample_rate, rel=0.01)
    assert np.max(np.abs(a.samples)) == pytest.approx(CFG.target_peak, rel=1e-5)
    assert abs(float(np.mean(a.samples))) < 2e-3


# -- formats ----------------------------------------------------------------------------
FORMATS = [
    ("u8.wav", "WAV", "PCM_U8"),
    ("s16.wav", "WAV", "PCM_16"),
    ("s24.wav", "WAV", "PCM_24"),
    ("f32.wav", "WAV", "FLOAT"),
    ("a.flac", "FLAC", "PCM_16"),
    ("a.ogg", "OGG", "VORBIS"),
    ("a.mp3", "MP3", "MPEG_LAYER_III"),
]


@pytest.mark.parametrize("name,fmt,subtype", FORMATS, ids=[f[0] for f in FORMATS])
def test_formats_decode_clean(tmp_path, name, fmt, subtype):
    p = write(tmp_path / name, voice_like(16000, dc=0.3, rumble=0.2), 16000, fmt, subtype)
    info = sf.info(p)
    assert (info.format, info.subtype) == (fmt, subtype)  # the file really is what we test
    assert_clean(audio.load(p), 16000)


@pytest.mark.parametrize("sr", [8000, 16000, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_rates_and_channels(tmp_path, sr, channels):
    p = write(tmp_path / "x.wav", voice_like(sr, channels=channels), sr)
    assert sf.info(p).channels == channels
    assert_clean(audio.load(p), sr)


def test_stereo_is_mean_of_channels(tmp_path):
    t = np.arange(8000) / 16000
    left, right = 0.5 * np.sin(2 * np.pi * 150 * t), 0.3 * np.sin(2 * np.pi * 220 * t + 1.0)
    a = audio.load(write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT"))
    b = audio.load(write(tmp_path / "mono.wav", (left + right) / 2, 16000, subtype="FLOAT"))
    np.testing.assert_allclose(a.samples, b.samples, atol=1e-6)


@pytest.mark.parametrize("sr", [8000, 16000, 48000])
def test_dc_and_rumble_removed(tmp_path, sr):
    x = voice_like(sr, dc=0.4, rumble=0.2)
    a = audio.load(write(tmp_path / "r.wav", x, sr))
    assert abs(float(np.mean(x))) > 0.3  # the input really had a large DC offset
    assert abs(float(np.mean(a.samples))) < 2e-3
    reduction = rumble_ratio_db(x, sr) - rumble_ratio_db(a.samples, a.sample_rate)
    assert reduction > 20.0, f"energy below 40 Hz only reduced by {reduction:.1f} dB"


def _insert_chunk_before_data(wav: bytes, chunk_id: bytes, payload: bytes) -> bytes:
    """RIFF surgery: insert a chunk just before 'data' and fix the RIFF size."""
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    pos = 12
    while pos < len(wav):
        cid, size = wav[pos : pos + 4], struct.unpack("<I", wav[pos + 4 : pos + 8])[0]
        if cid == b"data":
            break
        pos += 8 + size + (size & 1)  # chunks are padded to even length
    else:
        raise AssertionError("no data chunk in test WAV")
    chunk = chunk_id + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) & 1 else b"")
    out = wav[:pos] + chunk + wav[pos:]
    return out[:4] + struct.pack("<I", len(out) - 8) + out[8:]


def test_wav_with_bext_chunk(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, voice_like(16000), 16000, format="WAV", subtype="PCM_16")
    plain = buf.getvalue()
    # Broadcast WAV: 602-byte fixed part (description, originator, dates, ...) + coding history
    bext = b"voiceclf test".ljust(256, b"\0") + b"\0" * (602 - 256) + b"A=PCM,F=16000\r\n"
    data = _insert_chunk_before_data(plain, b"bext", bext)
    assert data.index(b"bext") < data.index(b"data")
    p = tmp_path / "bwf.wav"
    p.write_bytes(data)
    a = audio.load(p)
    assert_clean(a, 16000)
    np.testing.assert_array_equal(a.samples, audio.load("plain.wav", data=plain).samples)


@pytest.mark.parametrize("name,fmt,subtype", [FORMATS[1], FORMATS[4], FORMATS[6]], ids=["wav", "flac", "mp3"])
def test_data_bytes_match_file(tmp_path, name, fmt, subtype):
    p = write(tmp_path / name, voice_like(48000, channels=2, dc=0.1), 48000, fmt, subtype)
    from_file = audio.load(p)
    from_bytes = audio.load(p, data=p.read_bytes())
    np.testing.assert_array_equal(from_file.samples, from_bytes.samples)
    assert from_file.duration_s == from_bytes.duration_s
    assert from_file.source_sample_rate == from_bytes.source_sample_rate == 48000


# -- silence ----------------------------------------------------------------------------
def test_all_zero_stays_zero(tmp_path):
    a = audio.load(write(tmp_path / "zero.wav", np.zeros(8000), 16000))
    assert a.samples.dtype == np.float32 and len(a.samples) == 8000
    assert not np.any(a.samples)


def test_below_silence_threshold_not_amplified(tmp_path):
    x = 10 ** (-80 / 20) * voice_like(16000) / 0.45  # peak about -80 dBFS, below -70
    a = audio.load(write(tmp_path / "quiet.wav", x, 16000, subtype="FLOAT"))
    assert 0 < np.max(np.abs(a.samples)) < 10 ** (-70 / 20)


def test_quiet_but_above_threshold_is_normalised(tmp_path):
    x = 10 ** (-50 / 20) * voice_like(16000) / 0.45
    a = audio.load(write(tmp_path / "soft.wav", x, 16000, subtype="FLOAT"))
    assert np.max(np.abs(a.samples)) == pytest.approx(CFG.target_peak, rel=1e-5)


# -- bad inputs -------------------------------------------------------------------------
def _wav_bytes(n_frames: int = 8000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, voice_like(16000)[:n_frames], 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _flac_bytes() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, voice_like(16000), 16000, format="FLAC")
    return buf.getvalue()


BAD = {
    # name: (file bytes, expected class, expected code) — classes are what libsndfile 1.2.2 yields
    "zero.wav": (lambda: b"", audio.EmptyAudioError, "empty"),
    "text.wav": (lambda: b"this is a text file, not audio\n" * 20, audio.NotAudioError, "not_audio"),
    "garbage.wav": (lambda: b"RIFF\x00\x10\x00\x00WAVE" + b"\x13garbage" * 100, audio.CorruptAudioError, "corrupt"),
    "badfmt.wav": (lambda: _wav_bytes()[:20] + b"\xff" * 200, audio.CorruptAudioError, "corrupt"),
    "header_only.wav": (lambda: _wav_bytes()[:44], audio.EmptyAudioError, "empty"),
    "truncated.flac": (lambda: _flac_bytes()[: len(_flac_bytes()) // 2], audio.CorruptAudioError, "corrupt"),
    "junk.mp3": (lambda: b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00junk" * 50, audio.CorruptAudioError, "corrupt"),
}


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("via_bytes", [False, True], ids=["file", "bytes"])
def test_bad_inputs(tmp_path, name, via_bytes):
    make, cls, code = BAD[name]
    p = tmp_path / name
    p.write_bytes(make())
    with pytest.raises(audio.AudioError) as ei:
        audio.load(p, data=p.read_bytes() if via_bytes else None)
    e = ei.value
    assert type(e) is cls, f"{name}: expected {cls.__name__}, got {type(e).__name__}: {e}"
    assert e.code == code
    assert e.path == str(p)
    assert str(p) in str(e)


def test_nan_samples_are_corrupt(tmp_path):
    x = voice_like(16000)
    x[100] = np.nan
    p = write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(audio.CorruptAudioError, match="NaN") as ei:
        audio.load(p)
    assert str(p) in str(ei.value)


def test_too_long_checked_before_decoding(tmp_path, monkeypatch):
    p = write(tmp_path / "long.wav", voice_like(16000), 16000)

    def no_decode(*args, **kwargs):
        raise AssertionError("samples were decoded before the duration check")

    monkeypatch.setattr(sf.SoundFile, "read", no_decode)  # what load decodes with
    monkeypatch.setattr(sf, "read", no_decode)
    with pytest.raises(audio.TooLongError) as ei:
        audio.load(p, FeatureConfig(max_duration_s=0.1))
    assert ei.value.code == "too_long"
    assert str(p) in str(ei.value) and "0.1" in str(ei.value)


def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        audio.load(tmp_path / "nope.wav")


def test_errors_pickle_and_keep_attributes():
    e = audio.CorruptAudioError("/x/a.wav", "broken")
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is audio.CorruptAudioError
    assert (e2.path, e2.code, str(e2)) == ("/x/a.wav", "corrupt", "/x/a.wav: broken")
    assert {c.code for c in (audio.CorruptAudioError, audio.EmptyAudioError, audio.NotAudioError, audio.TooLongError)} == {
        "corrupt", "empty", "not_audio", "too_long"
    }


# -- sniff ------------------------------------------------------------------------------
def test_sniff_by_content_not_extension(tmp_path):
    wav = write(tmp_path / "voice.txt", voice_like(16000), 16000)  # audio with a text extension
    fake = tmp_path / "fake.wav"
    fake.write_text("not audio at all\n" * 10)
    assert audio.sniff(wav) and audio.sniff(str(wav)) and audio.sniff(wav.read_bytes())
    assert not audio.sniff(fake) and not audio.sniff(fake.read_bytes())
    assert not audio.sniff(b"")
    assert not audio.sniff(tmp_path / "missing.wav")
    assert not audio.sniff(tmp_path)  # a folder


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resample_is_librosas_soxr_hq(sr):
    import librosa

    y = np.random.default_rng(sr).standard_normal(sr * 2 + 7).astype(np.float32)
    got = audio.resample(y, sr, 16000)
    np.testing.assert_array_equal(got, librosa.resample(y, orig_sr=sr, target_sr=16000, res_type="soxr_hq"))
    assert got.dtype == np.float32


@pytest.mark.parametrize("rate, cutoff, order", sorted(cleaning.HIGHPASS_KNOWN))
def test_written_out_highpass_is_scipys_bit_for_bit(rate, cutoff, order):
    import scipy.signal

    sos, zi = cleaning.highpass_sos(rate, cutoff, order)
    want = scipy.signal.butter(order, cutoff, btype="highpass", fs=rate, output="sos")
    np.testing.assert_array_equal(sos, want)
    np.testing.assert_array_equal(zi, scipy.signal.sosfilt_zi(want))


def test_sosfilt_without_scipy_signal_is_scipys_bit_for_bit():
    """cleaning.sosfilt runs scipy's compiled loop loaded on its own; the filtered signal and final state are scipy.signal.sosfilt's."""
    import scipy.signal

    x = np.random.default_rng(1).standard_normal(20000)
    sos, zi = cleaning.highpass_sos(16000, 50.0, 4)
    got, got_state = cleaning.sosfilt(sos, x, zi * x[0])
    want, want_state = scipy.signal.sosfilt(sos, x, zi=zi * x[0])
    assert cleaning.sosfilt_kernel() is not None
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_state, want_state)


# -- cut-off recordings -----------------------------------------------------------------
def _encoded(fmt: str, seconds: float = 20.0, sr: int = 16000) -> bytes:
    """``seconds`` of a noisy voice-like tone (noise keeps Vorbis and MP3 from compressing it to nothing)."""
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 150 * t) + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["WAV", "OGG", "MP3"])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "blocks"])
def test_a_cut_off_recording_is_corrupt_and_says_so(tmp_path, fmt, streamed):
    """libsndfile decodes the first half of a half-copied WAV, Ogg or MP3 as if it were the whole recording; the
    container says otherwise (WAV data size, Ogg end-of-stream page, MP3 length tag), as a truncated FLAC is refused."""
    full = _encoded(fmt)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(full[: len(full) // 2])
    with sf.SoundFile(p) as f:  # what the checks are for: libsndfile opens it, and reads half the recording
        assert 0 < f.frames and len(f.read()) < 0.6 * 20 * 16000
    with pytest.raises(audio.CorruptAudioError, match="cut off") as ei:
        if streamed:
            list(audio.cleaned_blocks(p))
        else:
            audio.load(p, data=p.read_bytes() if fmt == "WAV" else None)
    assert ei.value.code == "corrupt" and str(p) in str(ei.value)


@pytest.mark.parametrize("fmt", ["WAV", "OGG", "MP3"])
def test_whole_recordings_are_not_cut_off(tmp_path, fmt):
    p = tmp_path / f"whole.{fmt.lower()}"
    p.write_bytes(_encoded(fmt))
    assert audio.load(p).duration_s == pytest.approx(20.0, abs=0.01)
    assert sum(len(b) for b in audio.cleaned_blocks(p)) == len(audio.load(p).samples)


def test_a_wav_written_to_a_pipe_is_not_cut_off(tmp_path):
    """A writer that cannot seek back leaves 0xFFFFFFFF as the data size ("until the end"): the whole file is there."""
    wav = bytearray(_encoded("WAV", seconds=1.0))
    at = wav.index(b"data")
    wav[at + 4 : at + 8] = struct.pack("<I", 0xFFFFFFFF)
    p = tmp_path / "piped.wav"
    p.write_bytes(bytes(wav))
    assert audio.load(p).duration_s == pytest.approx(1.0)
