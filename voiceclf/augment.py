"""Waveform augmentation at featurize time: the same voice as other microphones, rooms and lines would record it.

Never pitch or speed changes: those move the fundamental, the very cue that separates the classes.
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.fft
import scipy.signal

from voiceclf.audio import clean
from voiceclf.config import FeatureConfig


@functools.lru_cache(maxsize=4)
def _telephone_sos(sr: int) -> np.ndarray:
    return scipy.signal.butter(4, [300.0, 3400.0], btype="bandpass", fs=sr, output="sos")


def random_eq(y: np.ndarray, sr: int, rng: np.random.Generator, max_db: float = 8.0) -> np.ndarray:
    """A smooth random frequency response (±max_db, knots log-spaced 80 Hz–Nyquist), applied in the FFT domain."""
    # Zero-padded to a length the FFT is fast for (a recording's length is often a large prime, several times
    # slower), which also lets the filter's short ringing run into the padding instead of wrapping onto the start.
    n = scipy.fft.next_fast_len(len(y), real=True)
    spec = scipy.fft.rfft(y, n)
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    knots = np.geomspace(80.0, sr / 2, 8)
    gains_db = rng.uniform(-max_db, max_db, len(knots))
    curve = np.interp(np.log(np.maximum(freqs, 1.0)), np.log(knots), gains_db)
    return scipy.fft.irfft(spec * 10 ** (curve / 20), n)[: len(y)]


def reverb(y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A short synthetic room: exponentially decaying noise, RT60 0.1–0.5 s, mixed with the dry signal."""
    rt60 = rng.uniform(0.1, 0.5)
    t = np.arange(int(rt60 * sr)) / sr
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    ir[0] = 1.0 / rng.uniform(0.3, 1.0)  # direct path
    wet = scipy.signal.fftconvolve(y, ir)[: len(y)]
    return wet * (np.std(y) / (np.std(wet) + 1e-12))


def add_noise(y: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    """White or pink-ish noise at ``snr_db`` below the signal's RMS (computed over its louder half)."""
    loud = np.abs(y) >= np.median(np.abs(y))
    power = np.mean(y[loud] ** 2) if loud.any() else np.mean(y**2)
    noise = rng.standard_normal(len(y))
    if rng.random() < 0.5:  # pink-ish: more energy low, like hum and room noise
        noise = scipy.signal.lfilter([1.0], [1.0, -0.95], noise)
    noise *= np.sqrt(power / (np.mean(noise**2) + 1e-20) / 10 ** (snr_db / 10))
    return y + noise


def degrade(y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One random recording condition: EQ, maybe a telephone line, maybe a room, noise at 5–30 dB SNR, gain."""
    x = random_eq(np.asarray(y, np.float64), sr, rng)
    if rng.random() < 0.3:
        x = scipy.signal.sosfilt(_telephone_sos(sr), x)
    if rng.random() < 0.4:
        x = reverb(x, sr, rng)
    x = add_noise(x, rng, rng.uniform(5.0, 30.0))
    return x * 10 ** (rng.uniform(-20.0, 0.0) / 20)


def variants(y: np.ndarray, cfg: FeatureConfig, k: int, seed: int) -> list[np.ndarray]:
    """``k`` degraded copies of a cleaned waveform, cleaned again exactly as a decoded file would be.

    Deterministic for a given ``seed`` (the featurizer derives it from the file's sha256).
    """
    rngs = [np.random.default_rng([seed, i]) for i in range(1, k + 1)]
    return [clean(degrade(y, cfg.sample_rate, rng).astype(np.float32), cfg) for rng in rngs]
