"""Waveform → 1.6-s windows over voiced speech → 256-d speaker embeddings from a pretrained encoder.

The encoder is GE2E (Wan et al. 2018) as trained by Resemblyzer on thousands of speakers: a 40-band
mel spectrogram (25 ms / 10 ms at 16 kHz, power, not log), a 3-layer LSTM of 256 units, a linear
layer of 256, ReLU and L2 normalisation. Its weights ship inside the Resemblyzer wheel
(``resemblyzer/pretrained.pt``, Apache-2.0). This module is the encoder, written out in numpy (as
``vad.py`` does for the speech gate), so neither the package (``import resemblyzer`` pulls webrtcvad,
which needs ``pkg_resources``) nor torch is imported: only its weights file is read, as arrays
(``torch_file``: the semantics of ``torch.load(weights_only=True)``, no code from the file runs), and
its sha256 must equal the one the FeatureConfig names. Nothing is fetched at run time.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from voiceclf import torch_file
from voiceclf.pinned import WeightsError, in_wheel, not_installed, read_pinned
from voiceclf.config import EMBEDDING_DIM, FeatureConfig
from voiceclf.features import Windows, no_windows, speech_track

N_MELS = 40
FRAMES_PER_WINDOW = 160  # 1.6 s at the 10 ms hop: the partial-utterance length the encoder was trained on
_WEIGHTS = "resemblyzer/pretrained.pt"


class EncoderError(WeightsError):
    """The encoder weights are not the ones the FeatureConfig names, or not a GE2E encoder (missing: pinned.WeightsMissing)."""


class SpeakerEncoder:
    """GE2E speaker encoder: (N, T, 40) mel power frames → (N, 256) L2-normalised embeddings, in numpy.

    torch's ``nn.LSTM`` (3 layers, gates input, forget, cell, output; both biases) and ``Linear`` + ReLU,
    written out: a featurize or score worker then never imports torch (~510 MB of its 637 MB peak). The
    layers run in a wavefront, one time step of all three at a time, each as one matrix product of
    ``[input, previous h]`` with the stacked weights: no (T, N, 1024) buffer of input gates sits in memory.
    As in ``vad.SileroVAD``, the gates are reordered (input, forget, output | cell) and the three sigmoid
    gates' rows halved, so one tanh per step gives all four: sigmoid(x) = (1 + tanh(x / 2)) / 2.
    """

    def __init__(self, w: dict[str, np.ndarray], hidden: int = 256, layers: int = 3) -> None:
        self.hidden, self.layers = hidden, layers
        order = np.r_[0 : 2 * hidden, 3 * hidden : 4 * hidden, 2 * hidden : 3 * hidden]
        scale = np.r_[np.full(3 * hidden, 0.5, np.float32), np.ones(hidden, np.float32)]
        self._w, self._b = [], []
        for i in range(layers):
            stacked = np.concatenate([w[f"lstm.weight_ih_l{i}"], w[f"lstm.weight_hh_l{i}"]], axis=1)  # (4H, in + H)
            self._w.append(np.ascontiguousarray((stacked[order] * scale[:, None]).T, np.float32))
            self._b.append(((w[f"lstm.bias_ih_l{i}"] + w[f"lstm.bias_hh_l{i}"])[order] * scale).astype(np.float32))
        self._linear_w = np.ascontiguousarray(w["linear.weight"].T, np.float32)
        self._linear_b = w["linear.bias"].astype(np.float32)

    def __call__(self, mels: np.ndarray) -> np.ndarray:
        n, steps, n_mels = mels.shape
        H = self.hidden
        # per layer: [input at t | h at t - 1]; layer i's h is written straight into layer i + 1's input
        xh = [np.zeros((n, (n_mels if i == 0 else H) + H), np.float32) for i in range(self.layers)]
        c = np.zeros((self.layers, n, H), np.float32)
        gates, tmp = np.empty((n, 4 * H), np.float32), np.empty((n, H), np.float32)
        for t in range(steps):
            xh[0][:, :n_mels] = mels[:, t]
            for i in range(self.layers):
                np.matmul(xh[i], self._w[i], out=gates)
                gates += self._b[i]
                np.tanh(gates, out=gates)
                sig = gates[:, : 3 * H]
                sig += 1.0
                sig *= 0.5
                c[i] *= gates[:, H : 2 * H]
                np.multiply(gates[:, :H], gates[:, 3 * H :], out=tmp)
                c[i] += tmp
                np.tanh(c[i], out=tmp)
                h = xh[i][:, -H:]
                np.multiply(gates[:, 2 * H : 3 * H], tmp, out=h)
                if i + 1 < self.layers:
                    xh[i + 1][:, :H] = h
        raw = np.maximum(xh[-1][:, -H:] @ self._linear_w + self._linear_b, 0)
        return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)

    @property
    def n_parameters(self) -> int:
        """Weights of the LSTM and the linear layer, as torch counts them (its two biases per layer apart)."""
        lstm = sum(w.size + 2 * b.size for w, b in zip(self._w, self._b))
        return lstm + self._linear_w.size + self._linear_b.size


def weights_path() -> Path:
    """Where the installed Resemblyzer wheel keeps the encoder weights (found without importing it)."""
    if (path := in_wheel("resemblyzer", _WEIGHTS)) is not None:
        return path
    spec = importlib.util.find_spec("resemblyzer")  # a top-level package's __init__ is not run by find_spec
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / "pretrained.pt").is_file():
                return Path(loc) / "pretrained.pt"
    raise not_installed("speaker encoder", "resemblyzer==0.1.4")


def _pinned_weights(sha256: str) -> bytes:
    return read_pinned(weights_path(), sha256, EncoderError, "speaker encoder", "install the encoder the model was trained with")


def check(sha256: str) -> None:
    """Raise unless the installed encoder weights hash to ``sha256`` (:class:`pinned.WeightsMissing` when there are none).

    Without torch: a job's parent checks before its workers start, and never runs the encoder itself.
    """
    _pinned_weights(sha256)


#: The encoder's arrays in the weights file (its ``model_state``) and their shapes; the file holds more (the
#: similarity scale GE2E trained with, the optimizer's state), which is read but not used.
SHAPES = {"linear.weight": (256, 256), "linear.bias": (256,)} | {
    k: shape for i, n_in in enumerate((N_MELS, 256, 256)) for k, shape in (
        (f"lstm.weight_ih_l{i}", (1024, n_in)), (f"lstm.weight_hh_l{i}", (1024, 256)),
        (f"lstm.bias_ih_l{i}", (1024,)), (f"lstm.bias_hh_l{i}", (1024,)))}


@functools.lru_cache(maxsize=2)
def load_encoder(sha256: str) -> SpeakerEncoder:
    """The encoder whose weights hash to ``sha256``, once per process; refuse any other weights."""
    path = weights_path()
    data = _pinned_weights(sha256)
    try:
        state = torch_file.read_legacy(data)["model_state"]
    except (ValueError, KeyError, TypeError) as e:
        raise EncoderError(f"{path}: not a weights file this code reads ({type(e).__name__}: {e})") from None
    wrong = [k for k, shape in SHAPES.items() if not isinstance(state.get(k), np.ndarray) or state[k].shape != shape]
    if wrong:
        raise EncoderError(f"{path}: not the GE2E encoder this code implements (weights {', '.join(wrong)})")
    return SpeakerEncoder(state)


def mel_frames(track: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """(T, 40) float32 mel power frames of a speech track, exactly as the encoder was trained on them."""
    import librosa  # here: a job's parent imports this module to check the weights, and never needs librosa

    mel = librosa.feature.melspectrogram(y=track, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=N_MELS)
    return mel.astype(np.float32).T


def mel_windows(y: np.ndarray, cfg: FeatureConfig) -> Windows:
    """The encoder's input for a cleaned waveform: (n, 160, 40) mel windows over its voiced speech.

    The speech track's level is set to ``cfg.encoder_level_dbfs`` RMS first (the encoder's mel is not
    log, so it sees the level). Windows are strided views of one mel spectrogram of the whole track.
    """
    sp = speech_track(y, cfg)
    if sp is None:
        return no_windows(cfg, (FRAMES_PER_WINDOW, N_MELS))
    speech = sp.samples[sp.lead : len(sp.samples) - sp.lead] if sp.lead else sp.samples
    rms = float(np.sqrt(np.mean(np.square(speech, dtype=np.float64))))
    track = sp.samples * np.float32(10 ** (cfg.encoder_level_dbfs / 20) / max(rms, 1e-9))
    mel = mel_frames(track, cfg)
    step = cfg.hop_samples // cfg.hop_length
    views = np.lib.stride_tricks.sliding_window_view(mel, FRAMES_PER_WINDOW, axis=0)[::step][: sp.n]
    return Windows(np.ascontiguousarray(views.transpose(0, 2, 1)), *sp.timing(cfg), sp.regions_s(cfg))


def embed(mels: np.ndarray, cfg: FeatureConfig, batch_size: int = 256) -> np.ndarray:
    """(N, 160, 40) mel windows → (N, 256) float32 embeddings, in batches across files."""
    encoder = load_encoder(cfg.encoder_sha256)
    out = [encoder(mels[i : i + batch_size]) for i in range(0, len(mels), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, EMBEDDING_DIM), np.float32)


def embed_all(windows: list[Windows], cfg: FeatureConfig) -> list[Windows]:
    """Mel windows of many files → their embedding windows, with one encoder pass over all of them."""
    if not windows:
        return []
    vectors = embed(np.concatenate([w.features for w in windows]), cfg)
    bounds = np.cumsum([0] + [len(w) for w in windows])
    return [Windows(vectors[a:b], w.offsets_s, w.speech_s, w.regions_s) for w, a, b in zip(windows, bounds[:-1], bounds[1:])]
