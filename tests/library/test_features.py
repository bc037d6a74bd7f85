"""FeatureConfig, features.extract and GenderCNN: the contracts other parts rely on."""
import json

import numpy as np
import pytest
import torch

from voiceclf import features
from voiceclf.config import ConfigError, FeatureConfig
from voiceclf.model import GenderCNN, n_parameters

SR = 16000


def voice(seconds: float, f0: float = 120.0, lead_s: float = 0.3, tail_s: float = 0.3, seed: int = 0) -> np.ndarray:
    """A harmonic tone with silence around it: enough structure for the MFCC and pitch channels."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 8))
    y = np.concatenate([np.zeros(int(lead_s * SR)), 0.3 * tone, np.zeros(int(tail_s * SR))])
    return (y + 1e-4 * rng.standard_normal(len(y))).astype(np.float32)


# ----------------------------------------------------------------------------- config
def test_config_round_trip_and_shape():
    cfg = FeatureConfig(feature_set="mfcc_deltas", top_db=30.0)
    assert FeatureConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["feature_set"] == "mfcc_deltas"
    assert FeatureConfig().shape == (3, 98, 12)


@pytest.mark.parametrize("field,value", [("feature_set", "spectrogram"), ("sample_rate", 100), ("hop_s", 2.0), ("n_mfcc", 80), ("lifter", -1), ("hop_s", 0.505)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        FeatureConfig(**{field: value})


def test_config_from_dict_rejects_unknown_and_mistyped_fields():
    with pytest.raises(ConfigError, match="unknown field"):
        FeatureConfig.from_dict({**FeatureConfig().to_dict(), "warp": 1})
    with pytest.raises(ConfigError, match="n_mels"):
        FeatureConfig.from_dict({"n_mels": "many"})


# ----------------------------------------------------------------------------- features
def test_windows_shape_dtype_and_finite():
    w = features.extract(voice(2.0))
    assert w.features.dtype == np.float32 and w.features.shape[1:] == (3, 98, 12)
    assert len(w) == 1 + int((2.0 - 1.0) // 0.5)  # 1-s windows, 0.5-s hop over ~2 s of speech
    assert np.isfinite(w.features).all()
    # offsets are on the original time line: the first window starts where the speech does
    assert abs(w.offsets_s[0] - 0.3) < 0.05 and np.allclose(np.diff(w.offsets_s), 0.5, atol=0.02)


def test_short_clip_gives_one_padded_window_and_silence_none():
    w = features.extract(voice(0.4))
    assert len(w) == 1 and 0.35 < w.speech_s[0] < 0.5
    assert features.extract(np.zeros(SR, np.float32)).features.shape == (0, 3, 98, 12)
    assert features.extract(np.zeros(0, np.float32)).features.shape == (0, 3, 98, 12)


def test_feature_sets_differ_only_in_channel_2():
    y = voice(1.5)
    a = features.extract(y, FeatureConfig(feature_set="mfcc_pitch")).features
    b = features.extract(y, FeatureConfig(feature_set="mfcc_deltas")).features
    np.testing.assert_array_equal(a[:, :2], b[:, :2])
    assert np.abs(a[:, 2] - b[:, 2]).max() > 1.0


def test_pitch_channel_follows_f0():
    """The pitch band with most energy moves up with the fundamental: the cue MFCCs smooth away."""
    low = features.extract(voice(1.0, f0=100.0)).features[0, 2].mean(axis=0).argmax()
    high = features.extract(voice(1.0, f0=220.0)).features[0, 2].mean(axis=0).argmax()
    assert high > low + 2


def test_mfcc_matches_librosa_reference_per_window():
    """Channel 0 of a window equals librosa's MFCC computed on that second of audio alone."""
    import librosa

    cfg = FeatureConfig()
    y = voice(1.0, lead_s=0.0, tail_s=0.0)
    w = features.extract(y, cfg).features
    pe = librosa.effects.preemphasis(y, coef=cfg.pre_emphasis)
    ref = librosa.feature.mfcc(y=pe, sr=SR, n_mfcc=12, n_fft=400, hop_length=160, center=False, n_mels=40, lifter=22, window="hann")
    assert ref.shape == (12, 98)
    # the 80 dB floor of power_to_db is taken over the whole track in both cases: same here (one window)
    np.testing.assert_allclose(w[0, 0], ref.T, rtol=1e-3, atol=1e-2)


# ----------------------------------------------------------------------------- model
def test_gender_cnn_matches_model_card():
    m = GenderCNN()
    assert n_parameters(m) == 609_602
    assert [(n, tuple(p.shape)) for n, p in m.named_parameters()][0] == ("conv1.weight", (32, 3, 3, 3))
    assert m(torch.zeros(5, 3, 98, 12)).shape == (5, 2)
    # standardisation buffers travel in the state dict but are not trainable parameters
    assert {"mean", "std"} <= set(m.state_dict()) and all(p is not m.mean for p in m.parameters())


def test_fit_standardisation_sets_per_channel_coefficient_stats():
    x = np.random.default_rng(0).normal(5.0, 3.0, (200, 3, 98, 12)).astype(np.float32)
    m = GenderCNN().fit_standardisation(x)
    assert m.mean.shape == (3, 1, 12)
    assert np.allclose(m.mean.numpy(), 5.0, atol=0.1) and np.allclose(m.std.numpy(), 3.0, atol=0.1)


def test_voiced_intervals_match_librosa_split():
    """The numpy voice-activity rule is librosa.effects.split's, without its numba start-up cost."""
    import librosa

    cfg = FeatureConfig()
    rng = np.random.default_rng(3)
    for seed in range(5):
        y = np.concatenate([voice(rng.uniform(0.2, 1.5), f0=rng.uniform(90, 250), lead_s=rng.uniform(0, 0.5), tail_s=0.2, seed=seed) for _ in range(3)])
        ref = librosa.effects.split(y, top_db=cfg.top_db, frame_length=cfg.n_fft * 2, hop_length=cfg.hop_length)
        np.testing.assert_array_equal(features.voiced_intervals(y, cfg), ref)


def test_console_script_runs_the_same_entry_points():
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("voiceclf")
    assert exe.exists(), "make setup installs the voiceclf console script"
    top = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and all(c in top.stdout for c in ("featurize", "train", "score", "demo"))
    sub = subprocess.run([exe, "train", "--help"], capture_output=True, text=True)
    assert sub.returncode == 0 and "--holdout-corpus" in sub.stdout
    bad = subprocess.run([exe, "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


# ----------------------------------------------------------------------------- fast path vs librosa
def _librosa_log_spectra(track, cfg):
    """features.log_spectra as librosa calls (the definition the fast path must match)."""
    import librosa

    emphasised = librosa.effects.preemphasis(track, coef=cfg.pre_emphasis)
    power = np.abs(librosa.stft(emphasised, n_fft=cfg.n_fft, hop_length=cfg.hop_length, window="hann", center=False)) ** 2
    log_mel = librosa.power_to_db(features._mel_basis(cfg) @ power, ref=1.0, amin=1e-10, top_db=None)
    if cfg.feature_set == "mfcc_deltas":
        return log_mel, None
    pad = (cfg.pitch_n_fft - cfg.n_fft) // 2
    long_power = np.abs(librosa.stft(np.pad(track, (pad, pad)), n_fft=cfg.pitch_n_fft, hop_length=cfg.hop_length,
                                     window="hann", center=False)) ** 2
    return log_mel, librosa.power_to_db(features._pitch_bands(cfg) @ long_power, ref=1.0, amin=1e-10, top_db=None)


def _librosa_channels(log_mel, pitch, cfg):
    import librosa

    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=cfg.n_mfcc, dct_type=2, norm="ortho", lifter=cfg.lifter)
    delta = librosa.feature.delta(mfcc, width=cfg.delta_width, order=1)
    third = librosa.feature.delta(mfcc, width=cfg.delta_width, order=2) if pitch is None else pitch
    return np.stack([mfcc, delta, third]).astype(np.float32)


def _floored(spectra):
    return [None if s is None else features.floor_db(s, s.max()) for s in spectra]


@pytest.mark.parametrize("feature_set", ["mfcc_pitch", "mfcc_deltas"])
@pytest.mark.parametrize("seconds", [1.0, 1.37, 6.2])
def test_fast_frame_features_match_librosa_for_every_channel(feature_set, seconds):
    """ch0 (MFCC), ch1 (delta) and ch2 (pitch bands or delta-delta): the framing + scipy.fft path equals librosa's calls."""
    cfg = FeatureConfig(feature_set=feature_set)
    rng = np.random.default_rng(3)
    y = voice(seconds, f0=140.0, lead_s=0.0, tail_s=0.0) + (0.02 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
    fast, ref = features.log_spectra(y, cfg), _librosa_log_spectra(y, cfg)
    for a, b in zip(fast, ref):
        if b is not None:
            assert a.shape == b.shape and a.dtype == np.float32
            np.testing.assert_allclose(features.floor_db(a, b.max()), features.floor_db(b, b.max()), atol=2e-3)
    got = features.frame_features(y, cfg)
    want = _librosa_channels(*_floored(ref), cfg)
    assert got.shape == want.shape and got.dtype == np.float32
    scale = np.abs(want).max(axis=(1, 2))
    for ch in range(3):
        np.testing.assert_allclose(got[ch], want[ch], rtol=0, atol=1e-5 * scale[ch] + 1e-4, err_msg=f"channel {ch}")


@pytest.mark.parametrize("seconds, hop", [(0.128, 160), (1.0, 160), (2.37, 160), (17.0, 160), (1.0, 100), (1.5, 147)])
def test_pitch_band_power_equals_the_stft_definition(seconds, hop):
    """features._band_power (block DFTs and running sums, no FFT per frame) gives |STFT|**2 through the pitch filterbank:
    within float32 rounding of a float64 STFT, as the FFT path; several pieces (17 s: over 1024 frames) and hops whose
    gcd with n_fft is too small for blocks (147: the FFT path) included."""
    import scipy.signal

    cfg = FeatureConfig(feature_set="mfcc_pitch")
    rng = np.random.default_rng(int(seconds * 100) + hop)
    y = voice(seconds, f0=110.0, lead_s=0.0, tail_s=0.0) + (0.01 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
    x = np.pad(y, ((cfg.pitch_n_fft - cfg.n_fft) // 2,) * 2)
    basis = features._pitch_bands(cfg)
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), cfg.pitch_n_fft)[::hop]
    exact = (np.abs(np.fft.rfft(frames * scipy.signal.get_window("hann", cfg.pitch_n_fft), axis=-1)) ** 2) @ basis.T.astype(np.float64)
    got = features._band_power(x, cfg.pitch_n_fft, hop, basis)
    assert got.shape == exact.shape and got.dtype == np.float32
    want_db = features._db(exact.astype(np.float32))
    for a in (got, features._filterbank_power(x, cfg.pitch_n_fft, hop, basis)):  # the block path, and the FFT path it replaces
        a_db = features._db(a)
        np.testing.assert_allclose(features.floor_db(a_db, a_db.max()), features.floor_db(want_db, want_db.max()), atol=5e-3)


@pytest.mark.parametrize("n_fft", [256, 400, 2048])
def test_hann_window_is_scipys_bit_for_bit(n_fft):
    import scipy.signal

    np.testing.assert_array_equal(features._hann(n_fft), scipy.signal.get_window("hann", n_fft, fftbins=True).astype(np.float32))


@pytest.mark.parametrize("width, order", [(9, 1), (9, 2), (5, 1), (7, 2)])
def test_savgol_operator_is_scipys_filter(width, order):
    """The taps and edges written out in numpy are the ones scipy.signal.savgol_filter applies (to rounding)."""
    import scipy.signal

    n, h = 2 * width + 1, width // 2
    m = scipy.signal.savgol_filter(np.eye(n), width, polyorder=order, deriv=order, axis=-1, mode="interp")
    want = (m[n // 2 - h : n // 2 + h + 1, n // 2], m[:width, :h], m[-width:, -h:])
    for got, ref in zip(features._savgol_operator(width, order), want):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("frames", [9, 10, 98, 301])
def test_savgol_delta_equals_librosa_delta(order, frames):
    import librosa

    x = np.random.default_rng(frames).standard_normal((12, frames)).astype(np.float32) * 50
    np.testing.assert_allclose(features.savgol_delta(x, 9, order), librosa.feature.delta(x, width=9, order=order), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="width=9"):
        features.savgol_delta(x[:, :8], 9, order)


@pytest.mark.parametrize("sr, n_fft, n_mels, kw", [(16000, 400, 40, {}), (16000, 2048, 12, dict(fmin=60.0, fmax=420.0, norm=None)),
                                                   (22050, 512, 64, {}), (16000, 512, 80, dict(fmin=20.0, fmax=7600.0))])
def test_mel_filters_are_librosas_bit_for_bit(sr, n_fft, n_mels, kw):
    import librosa

    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, **kw)
    got = features.mel_filters(sr, n_fft, n_mels, fmin=kw.get("fmin", 0.0), fmax=kw.get("fmax"), slaney_norm="norm" not in kw)
    assert got.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


def test_a_cnn_featurize_worker_imports_neither_librosa_nor_torch(tmp_path):
    """librosa's numba start-up cost each worker ~1 s of CPU, torch ~1.5 s and scipy.signal ~1.2 s; a CNN worker needs none."""
    import subprocess
    import sys

    import soundfile as sf

    from voiceclf import synth

    sf.write(tmp_path / "a.wav", synth.synth_recording("male", np.random.default_rng(0), duration_s=1.5), SR)
    code = ("import sys; from voiceclf import file_windows; from voiceclf.config import FeatureConfig; "
            f"r = file_windows.featurize_batch([file_windows.Item(path='a.wav', source={str(tmp_path)!r}, label='male')], FeatureConfig()); "
            "assert r[0].n_windows == 1, r[0].message; "
            "print(sorted(m for m in ('librosa', 'numba', 'torch', 'scipy.signal', 'scipy.stats') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
