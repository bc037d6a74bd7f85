"""Is it a voice? Speech probability every 32 ms from Silero VAD, with the weights its wheel ships.

Silero VAD (silero-vad 6.2.3, MIT) is the field's standard detector: trained on thousands of hours of
speech, noise and music in many languages. Its wheel ships the 16 kHz model as TorchScript, ONNX and
``silero_vad/data/silero_vad_16k.safetensors``. A TorchScript or ONNX file is a program; the
safetensors file is only arrays. So, as ``embedding.py`` does for the speaker encoder, the network is
written out here as a small torch module and only that file is read, and only when its sha256 is the
one the FeatureConfig names. The package itself is never imported (its import sets torch's global
thread count). Nothing is fetched at run time.

The network, per 512-sample chunk with the previous chunk's last 64 samples in front: |STFT| (periodic
Hann, n_fft 256, hop 128; 4 frames of 129 bins), four 1-D convolutions to one 128-d vector, an LSTM
cell carried across chunks, a 1×1 convolution and a sigmoid. The STFT is done here with an FFT (the
wheel's first layer is exactly that DFT basis, as a convolution). The rest is written in numpy, not
torch: a network this small costs no more in numpy, and a featurize worker of the CNN feature sets then
never imports torch (about 200 MB per worker and a second of start-up).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable

import numpy as np
import scipy.fft

from voiceclf.safeio import read_safetensors
from voiceclf.pinned import WeightsError, in_wheel, not_installed, read_pinned
from voiceclf.config import VAD_SHA256 as SILERO_SHA256, FeatureConfig

SAMPLE_RATE = 16000
CHUNK = 512  # samples per probability: 32 ms
CONTEXT = 64  # samples of the previous chunk the model sees in front of each chunk
N_FFT, HOP = 256, 128
_WEIGHTS = "silero_vad/data/silero_vad_16k.safetensors"


class VadError(WeightsError):
    """The Silero VAD weights are not the ones the FeatureConfig names, or not this network (missing: pinned.WeightsMissing)."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow warnings


def _conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1) -> np.ndarray:
    """torch's Conv1d (padding 1), then ReLU: (N, C_in, L) → (N, C_out, L_out)."""
    k = w.shape[2]
    cols = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1))), k, axis=2)[:, :, ::stride]
    n, c, length = cols.shape[:3]
    out = cols.transpose(0, 2, 1, 3).reshape(n, length, c * k) @ w.reshape(len(w), c * k).T + b
    return np.maximum(out, 0).transpose(0, 2, 1)


class SileroVAD:
    """(N, 129, 4) STFT magnitudes of N consecutive chunks → (N,) speech probabilities; the LSTM state
    is carried from one call to the next through ``state``."""

    def __init__(self, w: dict[str, np.ndarray]) -> None:
        self.w = w
        # The LSTM's gates reordered (input, forget, output | cell) and the three sigmoid gates' rows halved:
        # then one tanh per step gives all four, as sigmoid(x) = (1 + tanh(x / 2)) / 2. Halving is exact in
        # binary floating point, so the probabilities are those of the plain form, bit for bit.
        order = np.r_[0:256, 384:512, 256:384]
        scale = np.r_[np.full(384, 0.5, np.float32), np.ones(128, np.float32)]
        self._w_ih = (w["lstm_cell.weight_ih"][order] * scale[:, None]).T.copy()
        self._w_hh = (w["lstm_cell.weight_hh"][order] * scale[:, None]).T.copy()
        self._b = ((w["lstm_cell.bias_ih"] + w["lstm_cell.bias_hh"])[order] * scale).astype(np.float32)

    def __call__(self, mag: np.ndarray, state: tuple[np.ndarray, np.ndarray] | None = None,
                 threshold: float = 0.5, enough: float = np.inf):
        """Probabilities and the state after the last chunk read. With ``enough``, reading stops after the chunk
        that brings the count of chunks with p >= ``threshold`` to ``enough``: fewer than N are returned then."""
        w = self.w
        x = _conv1d(mag, w["conv1.weight"], w["conv1.bias"])
        x = _conv1d(x, w["conv2.weight"], w["conv2.bias"], stride=2)
        x = _conv1d(x, w["conv3.weight"], w["conv3.bias"], stride=2)
        x = _conv1d(x, w["conv4.weight"], w["conv4.bias"])[:, :, 0]  # (N, 128): one vector per chunk
        gates_x = x @ self._w_ih + self._b
        w_hh, w_out, b_out = self._w_hh, w["final_conv.weight"][0, :, 0], w["final_conv.bias"][0]
        h, c = state if state is not None else (np.zeros(128, np.float32), np.zeros(128, np.float32))
        p = np.empty(len(x), np.float32)
        found, n = 0, 0
        for t in range(len(x)):  # the LSTM cell (torch's gates: input, forget, cell, output), chunk after chunk
            g = np.tanh(gates_x[t] + h @ w_hh)
            sig = (1.0 + g[:384]) * 0.5
            c = sig[128:256] * c + sig[:128] * g[384:]
            h = sig[256:] * np.tanh(c)
            p[t] = _sigmoid(np.maximum(h, 0) @ w_out + b_out)
            n = t + 1
            found += p[t] >= threshold
            if found >= enough:
                break
        return p[:n], (h, c)

    def many(self, mags: list[np.ndarray], states: list, threshold: float, enough: np.ndarray):
        """:meth:`__call__` of several recordings' next chunks at once: the convolutions in one pass over all
        chunks, the LSTM steps in lockstep (one matrix product per step for every recording).

        Returns per recording the probabilities of the chunks it read and its state; a recording stops being
        counted after the chunk that brings its count to ``enough``. Only a recording that read all its
        chunks without reaching ``enough`` has a state worth carrying on.
        """
        w, lens = self.w, np.array([len(m) for m in mags])
        x = _conv1d(np.concatenate(mags), w["conv1.weight"], w["conv1.bias"])
        x = _conv1d(x, w["conv2.weight"], w["conv2.bias"], stride=2)
        x = _conv1d(x, w["conv3.weight"], w["conv3.bias"], stride=2)
        x = _conv1d(x, w["conv4.weight"], w["conv4.bias"])[:, :, 0]
        gates = np.zeros((len(mags), lens.max(), 512), np.float32)  # (recording, step, gate); padded steps unread
        for i, (a, b) in enumerate(zip(np.r_[0, np.cumsum(lens)[:-1]], np.cumsum(lens))):
            gates[i, : b - a] = x[a:b] @ self._w_ih + self._b
        h = np.stack([st[0] if st is not None else np.zeros(128, np.float32) for st in states])
        c = np.stack([st[1] if st is not None else np.zeros(128, np.float32) for st in states])
        w_hh, w_out, b_out = self._w_hh, w["final_conv.weight"][0, :, 0], w["final_conv.bias"][0]
        p = np.zeros((len(mags), lens.max()), np.float32)
        found, read = np.zeros(len(mags)), np.zeros(len(mags), np.int64)
        for t in range(lens.max()):
            g = np.tanh(gates[:, t] + h @ w_hh)
            sig = (1.0 + g[:, :384]) * 0.5
            c = sig[:, 128:256] * c + sig[:, :128] * g[:, 384:]
            h = sig[:, 256:] * np.tanh(c)
            p[:, t] = _sigmoid(np.maximum(h, 0) @ w_out + b_out)
            reading = (t < lens) & (found < enough)
            read += reading
            found += reading & (p[:, t] >= threshold)
            if not ((t + 1 < lens) & (found < enough)).any():
                break
        return [p[i, : read[i]] for i in range(len(mags))], [(h[i], c[i]) for i in range(len(mags))]


def weights_path() -> Path:
    """Where the installed silero-vad wheel keeps the weights (found without importing the package)."""
    if (path := in_wheel("silero-vad", _WEIGHTS)) is None:
        raise not_installed("Silero VAD", "silero-vad==6.2.3")
    return path


@functools.lru_cache(maxsize=2)
def load_vad(sha256: str = SILERO_SHA256) -> SileroVAD:
    """The VAD whose weights hash to ``sha256``, once per process; refuse any other weights."""
    path = weights_path()
    data = read_pinned(path, sha256, VadError, "Silero VAD", "install the silero-vad the model was trained with")
    try:
        w = read_safetensors(data)
    except ValueError as e:
        raise VadError(f"{path}: {e}") from None
    shapes = {"conv1.weight": (128, 129, 3), "conv2.weight": (64, 128, 3), "conv3.weight": (64, 64, 3),
              "conv4.weight": (128, 64, 3), "lstm_cell.weight_ih": (512, 128), "lstm_cell.weight_hh": (512, 128),
              "lstm_cell.bias_ih": (512,), "lstm_cell.bias_hh": (512,), "final_conv.weight": (1, 128, 1), "final_conv.bias": (1,)}
    shapes.update({f"conv{i}.bias": (shapes[f"conv{i}.weight"][0],) for i in range(1, 5)})
    wrong = [k for k, shape in shapes.items() if k not in w or w[k].shape != shape]
    if wrong:
        raise VadError(f"{path}: not the Silero VAD network this code implements (weights {', '.join(wrong)})")
    return SileroVAD(w)


@functools.lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic


def n_chunks(n_samples: int) -> int:
    """Chunks (probabilities) of a waveform of ``n_samples``: the last one is zero-padded."""
    return max(1, -(-n_samples // CHUNK))


def chunk_spectra(y: np.ndarray, first: int = 0, count: int | None = None) -> np.ndarray:
    """(count, 129, 4) float32 |STFT| of chunks ``first`` … ``first + count - 1`` of a 16 kHz waveform.

    Chunk i is samples [512 i - 64, 512 (i + 1)) (zeros before the start and after the end), reflected
    by 64 samples at its end, as the model reads it: four frames of 256 samples, hop 128.
    """
    return _spectra(_chunks(y, first, count))


def _chunks(y: np.ndarray, first: int = 0, count: int | None = None) -> np.ndarray:
    """(count, 640) float32: :func:`chunk_spectra`'s chunks, each reflected by 64 samples at its end."""
    count = n_chunks(len(y)) - first if count is None else count
    a, b = first * CHUNK - CONTEXT, (first + count) * CHUNK
    padded = np.zeros(b - a, np.float32)
    padded[max(0, -a) : max(0, min(b, len(y)) - a)] = y[max(a, 0) : b]
    out = np.empty((count, CONTEXT + CHUNK + CONTEXT), np.float32)
    out[:, : CONTEXT + CHUNK] = np.lib.stride_tricks.sliding_window_view(padded, CONTEXT + CHUNK)[::CHUNK]
    out[:, CONTEXT + CHUNK :] = out[:, CONTEXT + CHUNK - 2 : CHUNK - 2 : -1]  # np.pad(mode="reflect") of 64, written out
    return out


def _spectra(chunks: np.ndarray) -> np.ndarray:
    """(n, 129, 4) |STFT| of (n, 640) chunks: one FFT call for all of them, whichever recordings they come from."""
    frames = np.lib.stride_tricks.sliding_window_view(chunks, N_FFT, axis=1)[:, ::HOP]  # (n, 4, 256)
    # scipy's FFT keeps float32 (numpy's rfft of float32 was 20× slower here)
    return np.abs(scipy.fft.rfft(frames * _hann(), axis=-1)).transpose(0, 2, 1)


def speech_probabilities(y: np.ndarray, sha256: str = SILERO_SHA256) -> np.ndarray:
    """p(speech) of each 32-ms chunk of a 16 kHz waveform: (ceil(len / 512),) float32."""
    return load_vad(sha256)(chunk_spectra(y))[0]


def speech_seconds(y: np.ndarray, sha256: str = SILERO_SHA256, threshold: float = 0.5, enough_s: float = np.inf,
                   block: int = 32) -> float:
    """Seconds of 32-ms chunks of a 16 kHz waveform with p(speech) >= ``threshold``.

    The chunks run in blocks of ``block`` (about 1 s) with the LSTM state carried across, which is the
    same computation as one pass; counting stops once ``enough_s`` seconds are found, so a recording
    that is speech costs about its first second of speech, and only what is not speech is read whole.
    """
    model, total = load_vad(sha256), n_chunks(len(y))
    state, found, need = None, 0, enough_s * SAMPLE_RATE / CHUNK
    for i in range(0, total, block):  # spectra per block too: an hour of audio never sits in memory as spectra
        p, state = model(chunk_spectra(y, i, min(block, total - i)), state, threshold, need - found)
        found += int((p >= threshold).sum())
        if found >= need:
            break
    return found * CHUNK / SAMPLE_RATE


def why_not_speech(y: np.ndarray, cfg: FeatureConfig, start: int = 0) -> str | None:
    """None when a cleaned recording holds at least ``cfg.vad_min_speech_s`` of voice, else the reason it is not speech.

    Energy finds where something is loud; this says whether it is a voice: white, pink or brown noise,
    random bytes decoded as audio, hum, tones, music and clicks hold none (``bench/vad.py``).
    ``cfg.vad_min_speech_s`` 0 turns the check off. ``start``: see :func:`why_not_speech_many`.
    """
    return why_not_speech_many([y], cfg, [start])[0]


#: Chunks (32 ms each) per recording per lockstep round of :func:`why_not_speech_many`: most speech is found
#: within the first 16 read from the first loud region, and a round's convolutions run for every chunk of it
#: whether needed or not.
MANY_BLOCK = 16
#: Chunks (0.26 s) read in front of a recording's first loud region (``starts``), where the detector's LSTM starts
#: fresh: its state needs some sound before the words (with 4, borderline recordings moved both ways).
LEAD_CHUNKS = 8


def why_not_speech_many(ys: list[np.ndarray], cfg: FeatureConfig, starts: list[int] | None = None,
                        block: int = MANY_BLOCK) -> list[str | None]:
    """:func:`why_not_speech` of several cleaned recordings, computed together.

    ``starts``: each recording's first loud sample (where its first voiced region begins, ``features.voiced_intervals``),
    0 when unknown. Reading begins ``LEAD_CHUNKS`` chunks before it, with a fresh LSTM state, and goes on to the end;
    only a recording that holds too little speech there is then read from its start up to that point (with a fresh
    state again). A verdict thus still covers every chunk of the recording, but a recording that is speech costs
    the chunks around its first words, not the silence in front of them. On the shared corpora (4,774 files) and
    ``bench/vad.py``'s generated audio (144 files) this cut the detector's CPU by a third; every generated verdict
    stayed the same, and of the corpora's files (all speech) 6 are refused instead of 7: two borderline RAVDESS
    recordings are now refused, three are kept.

    Each recording is read in rounds of ``block`` chunks, its LSTM state carried from round to round, until it
    holds enough speech or has been read whole; the recordings still being read share each round's convolutions
    and LSTM steps, which spares the per-call overhead that made the detector a third of a short clip's featurize time.
    """
    if cfg.vad_min_speech_s <= 0:
        return [None] * len(ys)
    model = load_vad(cfg.vad_sha256)
    need = cfg.vad_min_speech_s * SAMPLE_RATE / CHUNK
    total = np.array([n_chunks(len(y)) for y in ys])
    first = np.zeros(len(ys), np.int64) if starts is None else np.array([max(0, int(s) // CHUNK - LEAD_CHUNKS) for s in starts], np.int64)
    first = np.minimum(first, total - 1)
    # each recording's ranges of chunks, read in turn: [first, total), then [0, first)
    pos, end = first.copy(), total.copy()
    found = np.zeros(len(ys))
    states: list = [None] * len(ys)
    active = list(range(len(ys)))
    while active:
        counts = [min(block, end[i] - pos[i]) for i in active]
        # every active recording's next chunks through one FFT call (row by row: as one recording at a time)
        mags = np.split(_spectra(np.concatenate([_chunks(ys[i], pos[i], k) for i, k in zip(active, counts)])), np.cumsum(counts)[:-1])
        ps, new = model.many(mags, [states[i] for i in active], cfg.vad_threshold, need - found[active])
        for i, p, st, k in zip(active, ps, new, counts):
            found[i] += int((p >= cfg.vad_threshold).sum())
            pos[i] += k
            states[i] = st
            if found[i] < need and pos[i] == end[i] and end[i] == total[i] and first[i] > 0:
                pos[i], end[i], states[i] = 0, first[i], None  # too little speech from the first loud region on: the lead-in
        active = [i for i in active if found[i] < need and pos[i] < end[i]]
    seconds = found * CHUNK / SAMPLE_RATE
    return [None if seconds[i] >= cfg.vad_min_speech_s else _not_speech(seconds[i], len(y), cfg) for i, y in enumerate(ys)]


def _not_speech(found_s: float, n_samples: int, cfg: FeatureConfig) -> str:
    return (f"no voiced speech: Silero VAD found {found_s:.3f} s of speech in {n_samples / SAMPLE_RATE:.1f} s "
            f"(at least vad_min_speech_s = {cfg.vad_min_speech_s:g} s needed; noise, tones or music?)")


def why_not_speech_in(blocks: Iterable[np.ndarray], cfg: FeatureConfig) -> str | None:
    """:func:`why_not_speech` of a recording given as consecutive blocks (a long file, streamed).

    Blocks are read only until enough speech is found. Each block starts with a fresh LSTM state: at
    blocks of tens of seconds, a few chunks at each block's start are all that differ from one pass.
    """
    if cfg.vad_min_speech_s <= 0:
        return None
    found, n = 0.0, 0
    for y in blocks:
        found += speech_seconds(y, cfg.vad_sha256, cfg.vad_threshold, enough_s=cfg.vad_min_speech_s - found)
        n += len(y)
        if found >= cfg.vad_min_speech_s:
            return None
    return _not_speech(found, n, cfg)


def check(cfg: FeatureConfig) -> None:
    """Raise :class:`VadError` (:class:`pinned.WeightsMissing`) unless the detector ``cfg`` names is installed (nothing to check when it is off)."""
    if cfg.vad_min_speech_s > 0:
        load_vad(cfg.vad_sha256)
