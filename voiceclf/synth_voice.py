"""Synthetic adult voices: a speaker's parameters, and a source-filter synthesiser of their utterances.

The voices differ the way real ones do and in no other way:

* **fundamental frequency** — a per-speaker F0 (Hz) drawn from ~85–155 (male) or
  ~165–255 (female), moved by an intonation contour, vibrato, jitter and shimmer;
* **vocal-tract length** — vowel formants F1–F5 scaled per speaker, male formants
  ~17 % lower than female on average, with speaker ranges that overlap slightly;
* **voice quality** — open quotient, spectral tilt and breathiness lean by gender
  but overlap widely.

Loudness, silence length and background noise are drawn independently of gender, so
they carry no label information.

The synthesiser is a Klatt-style source-filter model: a Rosenberg glottal flow pulse
train plus glottally modulated aspiration noise, spectral tilt and lip radiation,
then a cascade of second-order formant resonators per vowel, with vowels crossfaded.
Everything is vectorised over samples; Python loops run per segment or per clip only.
Files and corpora made of these voices: :mod:`voiceclf.synth`.
"""
from __future__ import annotations

import numpy as np
from scipy import signal

from voiceclf.config import LABELS

__all__ = ["noise", "speaker_voice", "synth_recording", "synth_utterance"]


# Formants F1–F5 in Hz of ten English vowels for a reference adult male vocal tract
# (formant_scale 1.0): F1–F3 are Peterson & Barney's (1952) male means, F4/F5 typical values.
_VOWEL_FORMANTS_HZ = np.array([
    [270, 2290, 3010, 3600, 4500],  # i  (beet)
    [390, 1990, 2550, 3450, 4500],  # ɪ  (bit)
    [530, 1840, 2480, 3400, 4500],  # ɛ  (bet)
    [660, 1720, 2410, 3400, 4500],  # æ  (bat)
    [730, 1090, 2440, 3350, 4500],  # ɑ  (father)
    [570, 840, 2410, 3300, 4500],  # ɔ  (bought)
    [440, 1020, 2240, 3300, 4500],  # ʊ  (book)
    [300, 870, 2240, 3300, 4500],  # u  (boot)
    [640, 1190, 2390, 3350, 4500],  # ʌ  (but)
    [490, 1350, 1690, 3300, 4500],  # ɝ  (bird)
], dtype=np.float64)

# Formant bandwidths in Hz (F1–F5); each segment scales them by a random factor.
_BANDWIDTHS_HZ = np.array([70.0, 90.0, 150.0, 220.0, 300.0])

# Resonators start this long before their segment's crossfade begins, so the filter
# transient from a zero initial state has decayed (a 70 Hz-wide pole decays by 1/e in 4.5 ms).
_FILTER_WARMUP_S = 0.03


def _check_gender(gender: str) -> None:
    if gender not in LABELS:
        raise ValueError(f"gender must be one of {LABELS}, got {gender!r}")


def _clipped_normal(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def speaker_voice(gender: str, rng: np.random.Generator) -> dict:
    """Draw the parameters of one synthetic speaker, so all their clips sound alike.

    Parameters
    ----------
    gender : {"female", "male"}
    rng : numpy.random.Generator
        Source of randomness; the same generator state gives the same voice.

    Returns
    -------
    dict
        ``gender``; ``age`` (years); ``f0`` (Hz, the median F0 of the speaker's
        utterances); ``formant_scale`` (vocal-tract scaling of the male reference
        formants: ~1.0 male, ~1.2 female); ``formant_detune`` (5 per-formant factors,
        the individual vocal-tract shape); ``open_quotient`` (fraction of a glottal cycle
        the glottis is open); ``tilt`` (one-pole low-pass coefficient on the source,
        0 = bright, higher = steeper spectral tilt); ``breathiness`` (aspiration noise
        RMS relative to the glottal flow); ``jitter`` and ``shimmer`` (relative s.d.
        of per-cycle period and amplitude); ``vibrato_hz`` (Hz); ``vibrato_st`` and
        ``pitch_range_st`` (semitones, vibrato depth and intonation excursion);
        ``loudness_db`` (utterance RMS, dBFS). All values are plain Python types.
    """
    _check_gender(gender)
    female = gender == "female"
    return {
        "gender": gender,
        "age": int(rng.integers(20, 66)),
        "f0": _clipped_normal(rng, 208.0, 20.0, 165.0, 255.0) if female
        else _clipped_normal(rng, 118.0, 15.0, 85.0, 155.0),
        # Longer male vocal tracts: formants ~1/1.2 of female ones; 2 s.d. ranges just overlap.
        "formant_scale": _clipped_normal(rng, 1.20, 0.045, 1.08, 1.32) if female
        else _clipped_normal(rng, 1.00, 0.045, 0.90, 1.11),
        "formant_detune": [float(v) for v in np.clip(rng.normal(1.0, 0.025, 5), 0.94, 1.06)],
        "open_quotient": float(rng.uniform(0.55, 0.75) if female else rng.uniform(0.45, 0.65)),
        "tilt": float(rng.uniform(0.1, 0.6) if female else rng.uniform(0.0, 0.45)),
        "breathiness": float(rng.uniform(0.04, 0.14) if female else rng.uniform(0.02, 0.10)),
        "jitter": float(rng.uniform(0.003, 0.012)),
        "shimmer": float(rng.uniform(0.02, 0.07)),
        "vibrato_hz": float(rng.uniform(4.5, 6.5)),
        "vibrato_st": float(rng.uniform(0.05, 0.3)),
        "pitch_range_st": float(rng.uniform(1.5, 4.0)),
        "loudness_db": float(rng.uniform(-36.0, -24.0)),
    }


def _f0_contour(n: int, f0: float, voice: dict, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Per-sample F0 in Hz: declination, pitch accents, drift and vibrato around median ``f0``."""
    t = np.arange(n) / sample_rate
    dur = n / sample_rate
    x = t / dur
    excursion = voice["pitch_range_st"]
    st = -excursion * rng.uniform(0.3, 0.8) * x  # declination over the utterance
    if rng.random() < 0.2:  # question-like final rise
        st += excursion * rng.uniform(0.6, 1.2) * np.clip((x - 0.75) / 0.25, 0.0, 1.0) ** 2
    for _ in range(rng.integers(1, 3)):  # pitch accents
        centre, width = rng.uniform(0.15, 0.85) * dur, rng.uniform(0.05, 0.15)
        st += excursion * rng.uniform(0.3, 0.8) * np.exp(-0.5 * ((t - centre) / width) ** 2)
    knots = np.arange(0.0, dur + 0.1, 0.1)  # slow random drift, knots every 100 ms
    st += np.interp(t, knots, rng.normal(0.0, 0.25, knots.size))
    st += voice["vibrato_st"] * np.sin(2 * np.pi * voice["vibrato_hz"] * t + rng.uniform(0, 2 * np.pi))
    # The speaker's f0 is the median of every utterance (give or take a small daily shift),
    # so F0 ranges per gender hold for each clip, not just on average.
    st += rng.uniform(-0.5, 0.5) - np.median(st)
    return f0 * 2.0 ** (st / 12.0)


def _glottal_flow(f0_hz: np.ndarray, voice: dict, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Rosenberg glottal flow (0..1 per cycle) following ``f0_hz``, with per-cycle jitter and shimmer."""
    start = rng.uniform()  # random phase: the first pulse is not aligned with sample 0
    nominal_phase = start + np.cumsum(f0_hz) / sample_rate
    # Jitter perturbs each cycle's period; cycles are indexed on the unperturbed phase.
    jitter = 1.0 + voice["jitter"] * rng.standard_normal(int(nominal_phase[-1]) + 1)
    phase = start + np.cumsum(f0_hz * jitter[nominal_phase.astype(np.int64)]) / sample_rate
    cycle = phase.astype(np.int64)
    frac = phase - cycle
    # Opening takes 2/3 of the open phase and closing 1/3; the abrupt closure excites the tract.
    oq = voice["open_quotient"]
    t_open, t_close = oq * 2 / 3, oq / 3
    flow = np.where(
        frac < t_open,
        0.5 * (1 - np.cos(np.pi * frac / t_open)),
        np.where(frac < oq, np.cos(0.5 * np.pi * (frac - t_open) / t_close), 0.0),
    )
    # Shimmer scales whole cycles; a cycle starts with zero flow, so the steps are inaudible.
    shimmer = 1.0 + voice["shimmer"] * rng.standard_normal(cycle[-1] + 1)
    return flow * shimmer[cycle]


def _resonator_sos(freqs_hz: np.ndarray, bandwidths_hz: np.ndarray, sample_rate: int) -> np.ndarray:
    """Second-order sections of a cascade of Klatt resonators (unity gain at 0 Hz)."""
    r = np.exp(-np.pi * bandwidths_hz / sample_rate)
    a1 = -2 * r * np.cos(2 * np.pi * freqs_hz / sample_rate)
    a2 = r**2
    sos = np.zeros((len(freqs_hz), 6))
    sos[:, 0] = 1 + a1 + a2
    sos[:, 3], sos[:, 4], sos[:, 5] = 1.0, a1, a2
    return sos


def _raised_cosine_step(n: int, centre: float, width: float) -> np.ndarray:
    """0 before ``centre - width/2``, 1 after ``centre + width/2``, a raised cosine in between (samples)."""
    lo, hi = (int(np.clip(np.ceil(centre + d * width / 2), 0, n)) for d in (-1, 1))
    step = np.zeros(n)
    step[hi:] = 1.0
    step[lo:hi] = 0.5 - 0.5 * np.cos(np.pi * ((np.arange(lo, hi) - centre) / width + 0.5))
    return step


def _rms_db(y: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(y, dtype=np.float64)) + 1e-20))


def synth_utterance(gender: str, rng: np.random.Generator, *, voice: dict | None = None, speaker_f0: float | None = None,
                    formant_scale: float | None = None, duration_s: float = 0.8, sample_rate: int = 16000) -> np.ndarray:
    """Synthesise one voiced utterance: 2–4 vowel-like segments, crossfaded.

    Parameters
    ----------
    gender : {"female", "male"}
    rng : numpy.random.Generator
        Source of randomness for everything not fixed by the voice.
    voice : dict, optional
        Speaker parameters from :func:`speaker_voice` (its gender must match); a new
        speaker is drawn from ``rng`` when omitted.
    speaker_f0 : float, optional
        Median fundamental frequency in Hz; overrides ``voice["f0"]``.
    formant_scale : float, optional
        Vocal-tract scaling of the reference (adult male) formants, e.g. 1.0 for a
        typical male and 1.2 for a typical female; overrides ``voice["formant_scale"]``.
    duration_s : float
        Length in seconds (>= 0.05), onset and offset ramps included.
    sample_rate : int
        Samples per second.

    Returns
    -------
    numpy.ndarray
        float32 mono waveform of ``round(duration_s * sample_rate)`` samples whose RMS
        is ``voice["loudness_db"]`` dBFS.
    """
    _check_gender(gender)
    n = int(round(duration_s * sample_rate))
    if n < sample_rate // 20:
        raise ValueError(f"duration_s must be at least 0.05 s, got {duration_s!r}")
    if voice is None:
        voice = speaker_voice(gender, rng)
    elif voice["gender"] != gender:
        raise ValueError(f"voice is {voice['gender']!r} but gender is {gender!r}")
    f0 = voice["f0"] if speaker_f0 is None else speaker_f0
    scale = voice["formant_scale"] if formant_scale is None else formant_scale
    # The order of these steps is the order of their random draws: a clip depends on it.
    source = _source(n, f0, voice, rng, sample_rate)
    weights, edges = _segments(n, rng, sample_rate)
    source *= _envelope(n, weights, edges, rng, sample_rate)
    y = _vocal_tract(source, weights, voice, scale, rng, sample_rate)
    y *= 10 ** ((voice["loudness_db"] - _rms_db(y)) / 20)
    return y.astype(np.float32)


def _source(n: int, f0: float, voice: dict, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """The excitation, ``n`` samples: glottal flow around median ``f0`` Hz, spectral tilt, lip radiation, aspiration noise."""
    flow = _glottal_flow(_f0_contour(n, f0, voice, rng, sample_rate), voice, rng, sample_rate)
    # One filter for spectral tilt (one-pole low-pass) and lip radiation (first difference).
    a = voice["tilt"]
    voiced = signal.lfilter([1 - a, a - 1], [1, -a], flow)
    # Aspiration: white noise, louder while the glottis is open, at a level relative to the
    # radiated voiced source (white like radiated turbulence, it fills the upper harmonics).
    aspiration = (0.4 + flow) * rng.standard_normal(n)
    return voiced + voice["breathiness"] * np.sqrt(np.mean(voiced**2) / np.mean(aspiration**2)) * aspiration


def _segments(n: int, rng: np.random.Generator, sample_rate: int) -> tuple[list[np.ndarray], np.ndarray]:
    """2–4 vowel segments over ``n`` samples: each one's crossfade weight (non-negative, summing to 1 at every
    sample) and the segment edges, in samples."""
    k = int(rng.integers(2, 5))
    edges = np.concatenate([[0.0], np.cumsum(rng.uniform(0.6, 1.4, k))])
    edges *= n / edges[-1]
    crossfade = rng.uniform(0.02, 0.05) * sample_rate
    steps = [np.ones(n)] + [_raised_cosine_step(n, e, crossfade) for e in edges[1:-1]] + [np.zeros(n)]
    return [steps[j] - steps[j + 1] for j in range(k)], edges


def _envelope(n: int, weights: list[np.ndarray], edges: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Amplitude envelope: per-segment stress, onset/offset ramps, occasional dips between segments (like a
    consonant closure). Applied to the source, so the tract smooths it."""
    envelope = sum(w * 10 ** (rng.uniform(-6, 0) / 20) for w in weights)
    attack, release = rng.uniform(0.015, 0.05) * sample_rate, rng.uniform(0.04, 0.15) * sample_rate
    envelope *= _raised_cosine_step(n, attack / 2, attack)
    envelope *= 1 - _raised_cosine_step(n, n - release / 2, release)
    t = np.arange(n)
    for e in edges[1:-1]:
        if rng.random() < 0.35:
            width = rng.uniform(0.02, 0.04) * sample_rate
            envelope *= 1 - rng.uniform(0.6, 0.95) * np.exp(-0.5 * ((t - e) / width) ** 2)
    return envelope


def _vocal_tract(source: np.ndarray, weights: list[np.ndarray], voice: dict, scale: float, rng: np.random.Generator,
                 sample_rate: int) -> np.ndarray:
    """Each segment's vowel (formants scaled by ``scale``) filters the source where its crossfade weight is non-zero."""
    detune = np.asarray(voice["formant_detune"])
    warmup = int(_FILTER_WARMUP_S * sample_rate)
    y = np.zeros(len(source))
    for w, vowel in zip(weights, rng.permutation(len(_VOWEL_FORMANTS_HZ))[: len(weights)]):
        support = np.flatnonzero(w)
        lo, hi = support[0], support[-1] + 1
        start = max(0, lo - warmup)
        freqs = _VOWEL_FORMANTS_HZ[vowel] * scale * detune * rng.normal(1.0, 0.03, 5)
        bandwidths = _BANDWIDTHS_HZ * rng.uniform(0.8, 1.3)
        keep = freqs < 0.45 * sample_rate  # at low sample rates the upper formants don't fit
        sos = _resonator_sos(freqs[keep], bandwidths[keep], sample_rate)
        y[lo:hi] += w[lo:hi] * signal.sosfilt(sos, source[start:hi])[lo - start:]
    return y


def noise(n: int, rng: np.random.Generator, level_db: float) -> np.ndarray:
    """Background noise of RMS ``level_db`` dBFS, coloured anywhere from white to near-brown."""
    coloured = signal.lfilter([1.0], [1.0, -rng.uniform(0.0, 0.97)], rng.standard_normal(n))
    return coloured * 10 ** ((level_db - _rms_db(coloured)) / 20)


def synth_recording(
    gender: str,
    rng: np.random.Generator,
    *,
    duration_s: float,
    sample_rate: int = 16000,
    voice: dict | None = None,
) -> np.ndarray:
    """Synthesise a long recording of one speaker: utterances separated by pauses.

    Parameters
    ----------
    gender : {"female", "male"}
    rng : numpy.random.Generator
    duration_s : float
        Length of the recording in seconds.
    sample_rate : int
        Samples per second.
    voice : dict, optional
        Speaker parameters from :func:`speaker_voice`; drawn from ``rng`` when omitted.

    Returns
    -------
    numpy.ndarray
        float32 mono waveform of ``round(duration_s * sample_rate)`` samples: pauses of
        0.2–1.0 s and utterances of 0.5–2.0 s (the last may be shorter), over low
        background noise 35–50 dB below the speech.
    """
    _check_gender(gender)
    if voice is None:
        voice = speaker_voice(gender, rng)
    n = int(round(duration_s * sample_rate))
    y = np.zeros(n)
    pos = int(rng.uniform(0.2, 1.0) * sample_rate)
    while n - pos >= int(0.3 * sample_rate):  # room for a short utterance
        length = min(int(rng.uniform(0.5, 2.0) * sample_rate), n - pos)
        y[pos:pos + length] = synth_utterance(
            gender, rng, voice=voice, duration_s=length / sample_rate, sample_rate=sample_rate
        )[:length]
        pos += length + int(rng.uniform(0.2, 1.0) * sample_rate)
    y += noise(n, rng, voice["loudness_db"] - rng.uniform(35, 50))
    return y.astype(np.float32)
