"""Waveform → 1.6-s windows over voiced speech → 256-d speaker embeddings from a pretrained encoder.

The encoder is GE2E (Wan et al. 2018) as trained by Resemblyzer on thousands of speakers: a 40-band
mel spectrogram (25 ms / 10 ms at 16 kHz, power, not log), a 3-layer LSTM of 256 units, a linear
layer of 256, ReLU and L2 normalisation. Its weights ship inside the Resemblyzer wheel
(``resemblyzer/pretrained.pt``, Apache-2.0). This module is the encoder, written out as a small
torch module, so the package itself is never imported (``import resemblyzer`` pulls webrtcvad,
which needs ``pkg_resources``): only its weights file is read, with ``weights_only=True``, and
its sha256 must equal the one the FeatureConfig names. Nothing is fetched at run time.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import io
from pathlib import Path

import numpy as np

from voiceclf.io import read_pinned
from voiceclf.config import EMBEDDING_DIM, FeatureConfig
from voiceclf.features import Windows, no_windows, speech_track

N_MELS = 40
FRAMES_PER_WINDOW = 160  # 1.6 s at the 10 ms hop: the partial-utterance length the encoder was trained on
_WEIGHTS = "resemblyzer/pretrained.pt"


class EncoderError(RuntimeError):
    """The encoder weights are missing or are not the ones the FeatureConfig names."""


class WeightsMissing(EncoderError):
    """The resemblyzer wheel that holds the weights is not installed."""

    missing = "weights"  # what to install; the jobs turn it into a next step


@functools.lru_cache(maxsize=1)
def _encoder_class() -> type:
    """The encoder module, defined on first use: torch is imported only by a process that embeds (~1.5 s and
    ~200 MB that a CNN featurize job, parent or worker, does without)."""
    import torch
    from torch import nn

    class SpeakerEncoder(nn.Module):
        """GE2E speaker encoder: (B, T, 40) mel power frames → (B, 256) L2-normalised embeddings."""

        def __init__(self, n_mels: int = N_MELS, hidden: int = 256, layers: int = 3, dim: int = EMBEDDING_DIM) -> None:
            super().__init__()
            self.lstm = nn.LSTM(n_mels, hidden, layers, batch_first=True)
            self.linear = nn.Linear(hidden, dim)

        def forward(self, mels: torch.Tensor) -> torch.Tensor:
            _, (hidden, _) = self.lstm(mels)
            raw = torch.relu(self.linear(hidden[-1]))
            return raw / torch.linalg.vector_norm(raw, dim=1, keepdim=True).clamp_min(1e-12)

    return SpeakerEncoder


def __getattr__(name: str):
    if name == "SpeakerEncoder":
        return _encoder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def weights_path() -> Path:
    """Where the installed Resemblyzer wheel keeps the encoder weights (found without importing it)."""
    try:
        files = importlib.metadata.files("resemblyzer") or []
        for f in files:
            if f.as_posix() == _WEIGHTS:
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("resemblyzer")  # a top-level package's __init__ is not run by find_spec
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / "pretrained.pt").is_file():
                return Path(loc) / "pretrained.pt"
    raise WeightsMissing("the speaker encoder weights are not installed (they come with the resemblyzer==0.1.4 wheel)")


def _pinned_weights(sha256: str) -> bytes:
    return read_pinned(weights_path(), sha256, EncoderError, "speaker encoder", "install the encoder the model was trained with")


def check(sha256: str) -> None:
    """Raise unless the installed encoder weights hash to ``sha256`` (:class:`WeightsMissing` when there are none).

    Without torch: a job's parent checks before its workers start, and never runs the encoder itself.
    """
    _pinned_weights(sha256)


@functools.lru_cache(maxsize=2)
def load_encoder(sha256: str) -> "SpeakerEncoder":
    """The encoder whose weights hash to ``sha256``, once per process; refuse any other weights."""
    data = _pinned_weights(sha256)
    import torch

    checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    state = {k: v for k, v in checkpoint["model_state"].items() if k.startswith(("lstm.", "linear."))}
    encoder = _encoder_class()()
    encoder.load_state_dict(state)  # strict: every weight of the module comes from the file
    return encoder.eval()


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
    import torch

    encoder = load_encoder(cfg.encoder_sha256)
    with torch.no_grad():
        out = [encoder(torch.from_numpy(mels[i : i + batch_size])).numpy() for i in range(0, len(mels), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, EMBEDDING_DIM), np.float32)


def embed_all(windows: list[Windows], cfg: FeatureConfig) -> list[Windows]:
    """Mel windows of many files → their embedding windows, with one encoder pass over all of them."""
    if not windows:
        return []
    vectors = embed(np.concatenate([w.features for w in windows]), cfg)
    bounds = np.cumsum([0] + [len(w) for w in windows])
    return [Windows(vectors[a:b], w.offsets_s, w.speech_s, w.regions_s) for w, a, b in zip(windows, bounds[:-1], bounds[1:])]
