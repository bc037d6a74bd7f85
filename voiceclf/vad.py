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
wheel's first layer is exactly that DFT basis, as a convolution); the LSTM cell runs as one
``nn.LSTM`` pass over all of a recording's chunks.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import struct
from pathlib import Path

import numpy as np
import scipy.fft
import torch
from torch import nn

from voiceclf.config import VAD_SHA256 as SILERO_SHA256, FeatureConfig

SAMPLE_RATE = 16000
CHUNK = 512  # samples per probability: 32 ms
CONTEXT = 64  # samples of the previous chunk the model sees in front of each chunk
N_FFT, HOP = 256, 128
_WEIGHTS = "silero_vad/data/silero_vad_16k.safetensors"


class VadError(RuntimeError):
    """The Silero VAD weights are missing or are not the ones the FeatureConfig names."""


class SileroVAD(nn.Module):
    """(N, 129, 4) STFT magnitudes of N consecutive chunks → (N,) speech probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm = nn.LSTM(128, 128)  # the wheel's LSTMCell, unrolled over the chunks in one call
        self.final_conv = nn.Conv1d(128, 1, 1)

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(mag))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x)).squeeze(-1)  # (N, 128): one vector per chunk
        h, _ = self.lstm(x.unsqueeze(1))  # chunks are the time axis, batch 1
        return torch.sigmoid(self.final_conv(torch.relu(h[:, 0, :, None])))[:, 0, 0]


def weights_path() -> Path:
    """Where the installed silero-vad wheel keeps the weights (found without importing the package)."""
    try:
        for f in importlib.metadata.files("silero-vad") or []:
            if f.as_posix() == _WEIGHTS:
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    raise VadError("the Silero VAD weights are not installed: `make setup` installs them (pip install silero-vad==6.2.3)")


def read_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    """The float32 arrays of a safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if spec["dtype"] != "F32":
            raise VadError(f"{name}: expected F32 weights, got {spec['dtype']}")
        a, b = spec["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data, "<f4", (b - a) // 4, 8 + n + a).reshape(spec["shape"]).copy())
    return out


@functools.lru_cache(maxsize=2)
def load_vad(sha256: str = SILERO_SHA256) -> SileroVAD:
    """The VAD whose weights hash to ``sha256``, once per process; refuse any other weights."""
    path = weights_path()
    data = path.read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise VadError(f"{path}: the Silero VAD weights have sha256 {found[:12]}…, but the features were defined "
                       f"with {sha256[:12]}…; install the silero-vad the model was trained with")
    w = read_safetensors(data)
    state = {k: v for k, v in w.items() if k.startswith(("conv", "final_conv"))}
    for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        state[f"lstm.{k}_l0"] = w[f"lstm_cell.{k}"]
    vad = SileroVAD()
    vad.load_state_dict(state)  # strict: every weight of the module comes from the file
    return vad.eval()


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
    count = n_chunks(len(y)) - first if count is None else count
    a, b = first * CHUNK - CONTEXT, (first + count) * CHUNK
    padded = np.zeros(b - a, np.float32)
    padded[max(0, -a) : max(0, min(b, len(y)) - a)] = y[max(a, 0) : b]
    chunks = np.lib.stride_tricks.sliding_window_view(padded, CONTEXT + CHUNK)[::CHUNK]
    chunks = np.pad(chunks, ((0, 0), (0, CONTEXT)), mode="reflect")  # (count, 640)
    frames = np.lib.stride_tricks.sliding_window_view(chunks, N_FFT, axis=1)[:, ::HOP]  # (count, 4, 256)
    # scipy's FFT keeps float32 (numpy's rfft of float32 was 20× slower here)
    return np.abs(scipy.fft.rfft(frames * _hann(), axis=-1)).transpose(0, 2, 1)


@torch.no_grad()
def speech_probabilities(y: np.ndarray, sha256: str = SILERO_SHA256) -> np.ndarray:
    """p(speech) of each 32-ms chunk of a 16 kHz waveform: (ceil(len / 512),) float32."""
    return load_vad(sha256)(torch.from_numpy(np.ascontiguousarray(chunk_spectra(y)))).numpy()


@torch.no_grad()
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
        x = torch.from_numpy(np.ascontiguousarray(chunk_spectra(y, i, min(block, total - i))))
        x = torch.relu(model.conv1(x))
        x = torch.relu(model.conv2(x))
        x = torch.relu(model.conv3(x))
        x = torch.relu(model.conv4(x)).squeeze(-1)
        h, state = model.lstm(x.unsqueeze(1), state)
        p = torch.sigmoid(model.final_conv(torch.relu(h[:, 0, :, None])))[:, 0, 0]
        found += int((p >= threshold).sum())
        if found >= need:
            break
    return found * CHUNK / SAMPLE_RATE


def why_not_speech(y: np.ndarray, cfg: FeatureConfig) -> str | None:
    """None when a cleaned recording holds at least ``cfg.vad_min_speech_s`` of voice, else the reason it is not speech.

    Energy finds where something is loud; this says whether it is a voice: white, pink or brown noise,
    random bytes decoded as audio, hum, tones, music and clicks hold none (``bench/vad.py``).
    ``cfg.vad_min_speech_s`` 0 turns the check off.
    """
    if cfg.vad_min_speech_s <= 0:
        return None
    found = speech_seconds(y, cfg.vad_sha256, cfg.vad_threshold, enough_s=cfg.vad_min_speech_s)
    if found >= cfg.vad_min_speech_s:
        return None
    return (f"no voiced speech: Silero VAD found {found:.2f} s of speech in {len(y) / SAMPLE_RATE:.1f} s "
            f"(at least vad_min_speech_s = {cfg.vad_min_speech_s:g} s needed; noise, tones or music?)")


def check(cfg: FeatureConfig) -> None:
    """Raise :class:`VadError` unless the detector ``cfg`` names is installed (nothing to check when it is off)."""
    if cfg.vad_min_speech_s > 0:
        load_vad(cfg.vad_sha256)
