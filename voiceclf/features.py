"""Waveform → 1-s windows over voiced speech → (3, 98, 12) float32 arrays (FeatureConfig v1).

Frame-level features are computed once over the whole speech track and the windows
are strided views of those frames, so a window costs no extra STFT: everything is
vectorised over frames and windows.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import scipy.fft

from voiceclf.config import FeatureConfig


@dataclass(frozen=True)
class Windows:
    """The windows cut from one recording, and what each holds.

    features : (n, *shape) float32, what the model reads per window: the CNN's MFC images (n, 3, 98, 12), channels
        first; for the embedding set, the encoder's mel frames (n, 160, 40) while a worker still holds them
        (voiceclf.embedding.mel_windows), then the embeddings (n, 256) it makes of them (embed_all) before the
        result leaves the worker.
    offsets_s : (n,) start of each window in the original recording, in seconds.
    speech_s : (n,) seconds of real (not padded) speech inside each window.
    regions_s : (k, 2) the recording's voiced regions [start, end), in seconds, which the windows were cut
        from (joined into one track); None where unknown. Turns are placed on them (voiceclf.turns).
    """

    features: np.ndarray
    offsets_s: np.ndarray
    speech_s: np.ndarray
    regions_s: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.features)


@functools.lru_cache(maxsize=8)
def _mel_basis(cfg: FeatureConfig) -> np.ndarray:
    return mel_filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels)


@functools.lru_cache(maxsize=8)
def _pitch_bands(cfg: FeatureConfig) -> np.ndarray:
    # Mel spacing is nearly linear below 1 kHz: 12 evenly spread triangular bands over 60–420 Hz,
    # each a few STFT bins wide at n_fft 2048 (7.8 Hz per bin), so the band that holds F0 shows.
    return mel_filters(cfg.sample_rate, cfg.pitch_n_fft, cfg.n_mfcc, fmin=cfg.pitch_fmin, fmax=cfg.pitch_fmax, slaney_norm=False)


_F_SP, _MIN_LOG_HZ = 200.0 / 3, 1000.0  # Slaney's mel scale, librosa's constants and operations
_MIN_LOG_MEL, _LOGSTEP = _MIN_LOG_HZ / _F_SP, np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear below 1 kHz, logarithmic above."""
    hz = np.atleast_1d(np.asarray(hz, dtype=np.float64))
    mels = hz / _F_SP
    log_t = hz >= _MIN_LOG_HZ
    mels[log_t] = _MIN_LOG_MEL + np.log(hz[log_t] / _MIN_LOG_HZ) / _LOGSTEP
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = _F_SP * mels
    log_t = mels >= _MIN_LOG_MEL
    hz[log_t] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[log_t] - _MIN_LOG_MEL))
    return hz


def mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None, slaney_norm: bool = True) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) float32 triangular mel filters: ``librosa.filters.mel`` (Slaney scale; ``norm="slaney"``
    or, with ``slaney_norm=False``, ``norm=None``), the same operations in numpy.

    Written out so a featurize worker never imports librosa, whose numba start-up cost every worker a
    second of CPU (tested equal to librosa's).
    """
    fmax = sr / 2 if fmax is None else fmax
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin)[0], _hz_to_mel(fmax)[0], n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    if slaney_norm:
        weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights


def voiced_intervals(y: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """Voiced regions of a cleaned waveform, as (k, 2) sample indices [start, end).

    The rule of ``librosa.effects.split``: frames (``2 * n_fft`` samples, hop ``hop_length``, centred)
    whose RMS is within ``cfg.top_db`` of the loudest frame's. Written out in numpy because the librosa
    call costs every fresh worker process over a second of numba start-up, as much as ~400 files of
    actual work. A recording whose peak is below ``cfg.silence_peak_dbfs`` has no voiced region: the
    relative threshold alone would call the loudest noise speech.
    """
    if y.size == 0 or 20 * np.log10(np.max(np.abs(y)) + 1e-12) < cfg.silence_peak_dbfs:
        return np.zeros((0, 2), dtype=np.int64)
    frame, hop = cfg.n_fft * 2, cfg.hop_length
    padded = np.pad(y, frame // 2, mode="constant")
    n = 1 + (len(padded) - frame) // hop
    if frame % hop:
        frames = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop]
        return voiced_runs(np.mean(frames.astype(np.float64) ** 2, axis=1), len(y), cfg)
    # A frame is frame/hop whole hops: sum the squares once per hop, then add neighbouring hops (the same
    # mean up to summation order, without copying every sample frame/hop times).
    k = frame // hop
    per_hop = np.square(padded[: (n + k - 1) * hop], dtype=np.float64).reshape(-1, hop).sum(axis=1)
    power = per_hop[:n].copy()
    for j in range(1, k):
        power += per_hop[j : j + n]
    return voiced_runs(power / frame, len(y), cfg)


def voiced_runs(power: np.ndarray, n_samples: int, cfg: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """(k, 2) voiced regions [start, end) in samples from the mean power of each :func:`voiced_intervals` frame.

    Split out so a recording streamed in blocks (``voiceclf.streaming``) applies the same rule to frame
    powers it gathered block by block.
    """
    hop = cfg.hop_length
    voiced = 10 * np.log10(np.maximum(power, 1e-10) / max(power.max(), 1e-10)) > -cfg.top_db
    # edges of runs of voiced frames → sample indices (frame t is centred on sample t * hop)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]])))
    bounds = np.minimum(edges * hop, n_samples).reshape(-1, 2)
    return bounds[bounds[:, 1] > bounds[:, 0]].astype(np.int64)


#: Log spectra are floored this many dB below their loudest bin (``librosa.power_to_db``'s ``top_db``).
TOP_DB = 80.0


def log_spectra(track: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> tuple[np.ndarray, np.ndarray | None]:
    """The log spectra behind :func:`frame_features`, before their ``TOP_DB`` floor.

    Returns the log-mel (n_mels, T) and, for ``mfcc_pitch``, the pitch bands (n_mfcc, T) (None for
    ``mfcc_deltas``), in dB. The floor is relative to the loudest bin of the whole track, so a track
    computed in pieces (``voiceclf.streaming``) floors them all with one maximum, in :func:`floor_db`.

    The math of ``librosa.stft`` (periodic Hann, ``center=False``) → ``|.|**2`` → filterbank →
    ``librosa.power_to_db(ref=1, amin=1e-10)``, written as framing views and ``scipy.fft.rfft`` in float32:
    librosa's call overhead and float64 FFT were most of a short clip's cost. Equality with the librosa
    calls is tested (``tests/library/test_features.py``).
    """
    track = np.asarray(track, dtype=np.float32)
    # librosa.effects.preemphasis, with its default initial state: lfilter's zi = 2 y[0] - y[1], added as is
    emphasised = np.empty_like(track)
    emphasised[1:] = track[1:] - np.float32(cfg.pre_emphasis) * track[:-1]
    emphasised[:1] = track[:1] + (2 * track[:1] - track[1:2])
    mel = _filterbank_power(emphasised, cfg.n_fft, cfg.hop_length, _mel_basis(cfg))
    if cfg.feature_set == "mfcc_deltas":
        return _db(mel).T, None
    # Pad so the long frame t is centred where MFCC frame t is (t*hop + n_fft/2): the two align
    # frame for frame. The raw track, not the pre-emphasised one, keeps the low bands' energy.
    pad = (cfg.pitch_n_fft - cfg.n_fft) // 2
    bands = _band_power(np.pad(track, (pad, pad)), cfg.pitch_n_fft, cfg.hop_length, _pitch_bands(cfg))
    return _db(mel).T, _db(bands).T


#: STFT frames transformed at a time: bounds the scratch memory (~8 MB at n_fft 2048) whatever the track's length.
_FRAMES_PER_BLOCK = 512


@functools.lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    # scipy.signal.get_window("hann", n_fft, fftbins=True) (librosa.stft's window), its operations in numpy:
    # scipy.signal's import costs a worker ~1.2 s of CPU (tested equal, bit for bit)
    fac = np.linspace(-np.pi, np.pi, n_fft + 1)
    return (np.zeros(n_fft + 1) + 0.5 * np.cos(0 * fac) + 0.5 * np.cos(fac))[:n_fft].astype(np.float32)


@functools.lru_cache(maxsize=16)
def _nonzero_bins(basis: bytes, n_bins: int) -> tuple[int, int]:
    used = np.flatnonzero(np.frombuffer(basis, np.float32).reshape(-1, n_bins).any(axis=0))
    return int(used[0]), int(used[-1]) + 1


def _filterbank_power(x: np.ndarray, n_fft: int, hop: int, basis: np.ndarray) -> np.ndarray:
    """(T, n_bands) filterbank energies of ``|STFT|**2`` (periodic Hann, ``center=False``): T = 1 + (len - n_fft) // hop.

    Only the FFT bins the filterbank uses are squared and summed (the pitch bands use 50 of 1025).
    """
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    lo, hi = _nonzero_bins(basis.tobytes(), basis.shape[1])
    weights = np.ascontiguousarray(basis[:, lo:hi].T)  # (bins, n_bands)
    window = _hann(n_fft)
    out = np.empty((len(frames), basis.shape[0]), np.float32)
    for i in range(0, len(frames), _FRAMES_PER_BLOCK):
        spec = scipy.fft.rfft(frames[i : i + _FRAMES_PER_BLOCK] * window, axis=-1)[:, lo:hi]
        out[i : i + _FRAMES_PER_BLOCK] = (spec.real ** 2 + spec.imag ** 2) @ weights
    return out


#: Frames of :func:`_band_power` computed in one piece: bounds its scratch memory (a few MB) whatever the track's length.
_BAND_FRAMES_PER_PIECE = 1024


@functools.lru_cache(maxsize=8)
def _band_tables(n_fft: int, hop: int, lo: int, hi: int) -> tuple[int, np.ndarray, np.ndarray]:
    """:func:`_band_power`'s constants: the block length g = gcd(n_fft, hop); the DFT at bins lo - 1 … hi (K of them)
    of a block at each of the n_fft / g positions in a row of n_fft samples, as (n_fft / g, g, 2K) float32 cos | sin;
    and the phase (n_fft / g, K) that turns a sum in its row's phase into a frame's own."""
    g = math.gcd(n_fft, hop)
    period = n_fft // g
    ks = np.arange(lo - 1, hi + 1)
    pos = np.arange(period)[:, None] * g + np.arange(g)  # (period, g): sample position within a row
    angle = (-2 * np.pi / n_fft) * ((pos[:, :, None] * ks) % n_fft)  # reduced mod n_fft first: exact phases
    dft = np.concatenate([np.cos(angle), np.sin(angle)], axis=2).astype(np.float32)
    back = np.exp((2j * np.pi / n_fft) * ((np.arange(period)[:, None] * g * ks) % n_fft))
    return g, dft, back


def _band_power(x: np.ndarray, n_fft: int, hop: int, basis: np.ndarray) -> np.ndarray:
    """:func:`_filterbank_power` for a filterbank that uses few FFT bins (the pitch bands: 50 of 1025 at n_fft 2048).

    The same quantity without an FFT per frame. The Hann-windowed DFT at bin k is 0.5 X[k] - 0.25 (X[k-1] + X[k+1])
    of the frame's plain DFT X (periodic Hann = 0.5 - 0.5 cos). The signal is cut into blocks of g = gcd(n_fft, hop)
    samples (32 at 2048 / 160), a row being n_fft / g blocks; the DFT of every block at the K bins, in its row's
    phase, comes from one batched matrix product (float32: products of g terms, as accurate as the float32 FFT).
    A frame (n_fft samples from a block boundary) is the tail of one row and the head of the next: float64 sums
    within rows give it, rotated to the frame's own phase. About two thirds of the FFTs' time on the shared corpora
    (tested equal to the FFT path, ``tests/library/test_features.py``). Each piece is computed alone, so the result does
    not depend on anything but ``x``.
    """
    n_frames = 1 + (len(x) - n_fft) // hop
    lo, hi = _nonzero_bins(basis.tobytes(), basis.shape[1])
    g, dft, back = _band_tables(n_fft, hop, lo, hi)
    if g < 16 or n_frames <= 0:  # blocks too short to pay (a hop with few factors in common with n_fft)
        return _filterbank_power(x, n_fft, hop, basis)
    period, k = n_fft // g, hi - lo + 2
    weights = np.ascontiguousarray(basis[:, lo:hi].T, dtype=np.float64)  # (bins, n_bands)
    out = np.empty((n_frames, basis.shape[0]), np.float32)
    for f0 in range(0, n_frames, _BAND_FRAMES_PER_PIECE):
        t = min(_BAND_FRAMES_PER_PIECE, n_frames - f0)
        span = (t - 1) * hop + n_fft
        rows = -(-span // n_fft) + 1  # one row of zeros more: a frame that starts a row ends before the next
        blocks = np.zeros(rows * n_fft, np.float32)
        blocks[:span] = x[f0 * hop : f0 * hop + span]
        part = np.matmul(blocks.reshape(rows, period, g).transpose(1, 0, 2), dft)  # (period, rows, 2K), float32
        # blocks 0 … j of each row, summed in float64 (a loop of row adds: np.cumsum along axis 0 is several times
        # slower); float32 parts join float64 sums exactly, so no float64 copy of them is made (a fifth of a long file's time)
        upto = np.empty(part.shape, np.float64)
        upto[0] = part[0]
        for j in range(1, period):
            np.add(upto[j - 1], part[j], out=upto[j])
        start = np.arange(t) * (hop // g)
        r, p = start // period, start % period
        # blocks p … period - 1 of row r, then 0 … p - 1 of row r + 1
        plain = upto[-1, r] - upto[p, r] + part[p, r] + upto[p, r + 1] - part[p, r + 1]
        spec = (plain[:, :k] + 1j * plain[:, k:]) * back[p]  # (t, K): each frame's plain DFT at lo - 1 … hi
        spec = 0.5 * spec[:, 1:-1] - 0.25 * (spec[:, :-2] + spec[:, 2:])  # its Hann-windowed DFT at lo … hi - 1
        out[f0 : f0 + t] = (spec.real ** 2 + spec.imag ** 2) @ weights
    return out


def _db(power: np.ndarray) -> np.ndarray:
    """``librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)``."""
    return np.float32(10.0) * np.log10(np.maximum(power, np.float32(1e-10)))


def floor_db(spectrum: np.ndarray, loudest: float) -> np.ndarray:
    """``librosa.power_to_db``'s ``top_db`` step, given the loudest value: same operations, same bits."""
    return np.maximum(spectrum, loudest - TOP_DB)


def channels(log_mel: np.ndarray, pitch: np.ndarray | None, cfg: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """(3, n_mfcc, T) float32 frame features from floored log spectra (see :func:`log_spectra`).

    ``librosa.feature.mfcc(S=log_mel, dct_type=2, norm="ortho", lifter=...)`` and ``librosa.feature.delta``
    (Savitzky–Golay, ``mode="interp"``) as the linear maps they are: one matrix product for the MFCC, a
    correlation plus two small edge products for each delta (tested equal to librosa's).
    """
    mfcc = _dct_lifter(cfg) @ log_mel
    delta = savgol_delta(mfcc, cfg.delta_width, order=1)
    third = savgol_delta(mfcc, cfg.delta_width, order=2) if pitch is None else pitch
    return np.stack([mfcc, delta, third]).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _dct_lifter(cfg: FeatureConfig) -> np.ndarray:
    """(n_mfcc, n_mels): DCT-II (ortho), first n_mfcc rows, each scaled by librosa's sinusoidal lifter."""
    dct = scipy.fft.dct(np.eye(cfg.n_mels), type=2, norm="ortho", axis=0)[: cfg.n_mfcc]
    if cfg.lifter > 0:
        dct *= (1 + (cfg.lifter / 2) * np.sin(np.pi * np.arange(1, 1 + cfg.n_mfcc) / cfg.lifter))[:, None]
    return dct.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _savgol_operator(width: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """librosa.feature.delta's ``mode="interp"`` Savitzky–Golay filter as (interior taps, left edge, right edge).

    The filter librosa calls (``scipy.signal.savgol_filter``, polyorder = deriv = order): out[:, t] = Σ_s x[:, s] M[s, t].
    Its derivative of the order of the fitted polynomial is a constant, the same wherever the fit is evaluated:
    the interior taps and every column of both edges are that one least-squares row (numpy's, to rounding of
    scipy's; scipy.signal's import costs a worker ~1.2 s of CPU; tested equal to librosa's delta).
    """
    h = width // 2
    powers = np.vander(np.arange(-h, width - h, dtype=np.float64), order + 1, increasing=True)  # (width, order + 1)
    taps = math.factorial(order) * np.linalg.pinv(powers)[order]
    edge = np.repeat(taps[:, None], h, axis=1)
    return taps, edge, edge.copy()


def savgol_delta(x: np.ndarray, width: int = 9, order: int = 1) -> np.ndarray:
    """``librosa.feature.delta(x, width=width, order=order, axis=-1)`` (``mode="interp"``) of a (C, T) array, T >= width."""
    if x.shape[-1] < width:
        raise ValueError(f"savgol_delta: need at least width={width} frames, got {x.shape[-1]}")
    taps, left, right = _savgol_operator(width, order)
    h = width // 2
    out = np.empty(x.shape, np.float64)
    out[:, h : x.shape[-1] - h] = np.lib.stride_tricks.sliding_window_view(x, width, axis=-1) @ taps
    out[:, :h] = x[:, :width] @ left
    out[:, x.shape[-1] - h :] = x[:, -width:] @ right
    return out


def frame_features(track: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """Per-frame features of a speech track: (3, n_mfcc, T) float32, T = 1 + (len - n_fft) // hop.

    Frame t covers samples [t*hop, t*hop + n_fft) (``center=False``), as the model card's MFC.
    """
    log_mel, pitch = log_spectra(track, cfg)
    return channels(floor_db(log_mel, log_mel.max()), None if pitch is None else floor_db(pitch, pitch.max()), cfg)


@dataclass(frozen=True)
class SpeechTrack:
    """The voiced regions of a recording joined into one track, padded to at least one window.

    samples : the track.  intervals : (k, 2) voiced regions of the recording, in samples.
    lead : zeros padded in front of a track shorter than one window.  n : windows over the track.
    """

    samples: np.ndarray
    intervals: np.ndarray
    lead: int
    n: int

    def regions_s(self, cfg: FeatureConfig) -> np.ndarray:
        """The voiced regions in seconds, (k, 2) float64."""
        return self.intervals.astype(np.float64) / cfg.sample_rate

    def timing(self, cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
        """Each window's start in the original recording and its seconds of real speech."""
        sr, win, hop = cfg.sample_rate, cfg.window_samples, cfg.hop_samples
        starts = np.arange(self.n) * hop - self.lead
        iv = self.intervals
        track_pos = np.concatenate([[0], np.cumsum(iv[:, 1] - iv[:, 0])])
        k = np.clip(np.searchsorted(track_pos, np.maximum(starts, 0), side="right") - 1, 0, len(iv) - 1)
        offsets = (iv[k, 0] + np.maximum(starts, 0) - track_pos[k]) / sr
        speech = np.minimum(starts + win, track_pos[-1]) - np.maximum(starts, 0)
        return offsets.astype(np.float32), (speech / sr).astype(np.float32)


def speech_track(y: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> SpeechTrack | None:
    """Join the voiced regions of a cleaned waveform; None when there are none.

    A track shorter than one window is zero-padded symmetrically into one window; windows of
    ``cfg.window_s`` step by ``cfg.hop_s`` over it. Shared by both feature families, so a
    window means the same stretch of speech whatever model reads it.
    """
    win, hop = cfg.window_samples, cfg.hop_samples
    intervals = voiced_intervals(y, cfg)
    if len(intervals) == 0:
        return None
    track = np.concatenate([y[s:e] for s, e in intervals])
    lead = 0
    if len(track) < win:
        lead = (win - len(track)) // 2
        track = np.pad(track, (lead, win - len(track) - lead))
    return SpeechTrack(track, intervals, lead, 1 + (len(track) - win) // hop)


def no_windows(cfg: FeatureConfig, shape: tuple[int, ...] | None = None) -> Windows:
    return Windows(np.zeros((0, *(shape or cfg.shape)), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 2)))


def extract(y: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> Windows:
    """Cut a cleaned waveform (mono, ``cfg.sample_rate``) into (n, 3, 98, 12) model-input windows.

    The voiced regions are joined into one speech track (:func:`speech_track`); windows of
    ``cfg.window_s`` step by ``cfg.hop_s`` over it. No voiced region gives n = 0 windows.
    """
    sp = speech_track(y, cfg)
    if sp is None:
        return no_windows(cfg)
    frames = frame_features(sp.samples, cfg)  # (3, n_mfcc, T)
    step = cfg.hop_samples // cfg.hop_length
    # (3, n_mfcc, n, n_frames) strided view → (n, 3, n_frames, n_mfcc): frames on axis -2.
    views = np.lib.stride_tricks.sliding_window_view(frames, cfg.n_frames, axis=2)[:, :, ::step][:, :, : sp.n]
    features = np.ascontiguousarray(views.transpose(2, 0, 3, 1))
    return Windows(features, *sp.timing(cfg), sp.regions_s(cfg))
