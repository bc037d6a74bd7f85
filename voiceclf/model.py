"""The two model families, GenderCNN (the model card's CNN) and EmbeddingHead (on speaker embeddings), and how
either one turns windows into p(male) on a device.

Both carry their input standardisation inside the module, so a saved model needs nothing else.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from voiceclf.config import DeviceError, FeatureConfig


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """``nn.MaxPool2d(2)`` of (N, C, H, W): the same maxima (an odd last row or column dropped), as two
    elementwise maxima of strided views.

    Written out because torch's CPU max-pool kernel is ~10x slower on these narrow maps (12 and 6 columns):
    with it, pooling took as long as both convolutions when scoring on one thread.
    """
    h, w = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
    x = torch.maximum(x[:, :, 0:h:2, :w], x[:, :, 1:h:2, :w])
    return torch.maximum(x[..., 0::2], x[..., 1::2])


class GenderCNN(nn.Module):
    """Conv(3→32) → pool → Conv(32→64) → pool → Linear(4608→128) → Linear(128→2).

    Input (N, 3, 98, 12) float32, output (N, 2) logits (class 0 female, 1 male).
    ``mean``/``std`` buffers (per channel × coefficient, shape (3, 1, 12)) standardise the
    input; they are fitted on training data with :meth:`fit_standardisation` and travel
    with the saved model, and they are not trainable parameters (609,602 are).
    """

    def __init__(self, n_frames: int = 98, n_coeffs: int = 12) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(3, 1, n_coeffs))
        self.register_buffer("std", torch.ones(3, 1, n_coeffs))
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64 * (n_frames // 4) * (n_coeffs // 4), 128)
        self.fc2 = nn.Linear(128, 2)

    def fit_standardisation(self, x: np.ndarray | torch.Tensor) -> "GenderCNN":
        """Set the input mean/std from training windows x of shape (N, 3, 98, 12)."""
        x = torch.as_tensor(x, dtype=torch.float32)
        self.mean.copy_(x.mean(dim=(0, 2), keepdim=True)[0])
        self.std.copy_(x.std(dim=(0, 2), keepdim=True)[0].clamp_min(1e-3))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.training:
            # The same maxima by torch's kernel, pooled before the ReLU (which commutes with a max) so the ReLU and
            # its backward see a quarter of the values: the strided maxima's backward (masks to split ties) made a
            # training step ~2x slower. Scoring keeps max_pool2, the faster forward.
            x = torch.relu(nn.functional.max_pool2d(self.conv1(x), 2))
            x = torch.relu(nn.functional.max_pool2d(self.conv2(x), 2))
        else:
            x = max_pool2(torch.relu(self.conv1(x)))
            x = max_pool2(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class EmbeddingHead(nn.Module):
    """(N, 256) speaker embeddings → (N, 2) logits: logistic regression (``hidden=0``) or one hidden layer.

    ``mean``/``std`` buffers standardise each embedding dimension (fitted on training data).
    """

    def __init__(self, dim: int = 256, hidden: int = 0, dropout: float = 0.2) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        if hidden:
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 2))
        else:
            self.net = nn.Sequential(nn.Linear(dim, 2))

    def fit_standardisation(self, x: np.ndarray | torch.Tensor) -> "EmbeddingHead":
        x = torch.as_tensor(x, dtype=torch.float32)
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(x.std(dim=0).clamp_min(1e-4))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_model(cfg: FeatureConfig, hidden: int = 0) -> nn.Module:
    """The family's model for a feature config: GenderCNN on MFC images, EmbeddingHead on embeddings."""
    if cfg.family == "embedding_head":
        return EmbeddingHead(cfg.shape[0], hidden)
    return GenderCNN(*cfg.shape[1:])


def architecture(module: nn.Module) -> dict:
    """What :func:`build_model` needs besides the FeatureConfig to build ``module`` again: ``{"hidden": n}``."""
    if isinstance(module, EmbeddingHead) and len(module.net) > 1:
        return {"hidden": int(module.net[0].out_features)}
    return {"hidden": 0}


def rebuild(cfg: FeatureConfig, arch: dict, arrays: dict[str, np.ndarray]) -> nn.Module:
    """``build_model(cfg, **arch)`` holding ``arrays`` as its state dict, in eval mode.

    Every name and shape must match the family's module (ValueError otherwise): the code here defines the
    network, the arrays only fill it, so nothing in a model file is run.
    """
    module = build_model(cfg, int(arch.get("hidden", 0)))
    try:
        module.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()}, strict=True)
    except RuntimeError as e:
        raise ValueError(" ".join(str(e).split())[:300]) from None
    return module.eval()


def n_parameters(model: nn.Module) -> int:
    """Trainable parameters (609,602 for GenderCNN)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- running a model
def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cuda`` without one is a :class:`DeviceError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device cuda: torch sees no CUDA device (a CPU build of torch, or no GPU)")
    return torch.device(name)


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are (the CPU for a model without any)."""
    return next(iter(model.parameters()), torch.empty(0)).device


@torch.no_grad()
def logits_of(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """(N, 2) logits of windows ``x`` (N, *cfg.shape), the model in eval mode, computed on the model's device in
    batches of ``batch_size`` windows (memory stays bounded), returned on the CPU.

    Batches of 128 windows stay in cache: the CNN ran ~1.8x faster per window on one CPU thread than in batches
    of 512, with the same bits (tests/jobs/test_score.py)."""
    model.eval()
    device = device_of(model)
    x = torch.as_tensor(x)
    out = [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 2)


def p_male(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """p(male) per window of ``x`` (N, *cfg.shape): MFC images (N, 3, 98, 12) or embeddings (N, 256); (N,) float64.

    The one p(male) of a window, for training, the champion rule and scoring alike."""
    return p_male_of(logits_of(model, x, batch_size))


def p_male_of(logits: torch.Tensor) -> np.ndarray:
    """p(male) from (N, 2) logits (class 1 is male): (N,) float64."""
    return torch.softmax(logits, dim=1)[:, 1].numpy().astype(np.float64)
