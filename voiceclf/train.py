"""Split by speaker, train one grid point of the model-card CNN, and measure it.

Read top to bottom: data → split → one training loop → metrics. No MLflow here (tracking.py
logs what this returns), so a grid point can run in any worker process.
"""
from __future__ import annotations

import hashlib
import itertools
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

from voiceclf.config import LABELS, FeatureConfig
from voiceclf.model import GenderCNN

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """The data cannot be trained on (one gender only, too few speakers, no labels)."""


# ----------------------------------------------------------------------------- data
@dataclass
class Data:
    """Windows of one FeatureConfig with their labels and groups.

    x : (N, 3, 98, 12) float32 windows.  y : (N,) int64, 0 female / 1 male.
    speaker : (N,) speaker ids.  file : (N,) one id per source file (windows are pooled per file when scoring).
    augment : (N,) 0 for a recording's own windows, k > 0 for its k-th augmented variant
        (training only: validation and test see real recordings).
    """

    x: np.ndarray
    y: np.ndarray
    speaker: np.ndarray
    file: np.ndarray
    augment: np.ndarray
    cfg: FeatureConfig
    speaker_level: bool = True  # False: no speaker ids, the split falls back to files (optimistic)

    @classmethod
    def from_shards(cls, rows: pd.DataFrame, x: np.ndarray, cfg: FeatureConfig) -> "Data":
        if rows["label"].isna().any():
            n = int(rows["label"].isna().sum())
            raise DataError(f"{n} windows have no label; train needs labelled features (featurize a labelled corpus)")
        unknown = set(rows["label"]) - set(LABELS)
        if unknown:
            raise DataError(f"unknown labels {sorted(unknown)}; expected {LABELS}")
        file = (rows["source"] + "/" + rows["path"]).to_numpy()
        speaker_level = rows["speaker"].notna().all()
        speaker = (rows["source"] + "/" + rows["speaker"]).to_numpy() if speaker_level else file
        y = rows["label"].map({lab: i for i, lab in enumerate(LABELS)}).to_numpy(np.int64)
        return cls(x, y, speaker, file, rows["augment"].to_numpy(np.int8), cfg, bool(speaker_level))

    def subset(self, mask: np.ndarray) -> "Data":
        return Data(self.x[mask], self.y[mask], self.speaker[mask], self.file[mask], self.augment[mask], self.cfg, self.speaker_level)

    def fingerprint(self) -> str:
        """A short hash of which windows (files, labels) and config this data is."""
        h = hashlib.sha256(self.cfg.to_json().encode())
        for f, lab in sorted(set(zip(self.file.tolist(), self.y.tolist()))):
            h.update(f"{f}\t{lab}\n".encode())
        return h.hexdigest()[:16]


def split_speakers(speakers: np.ndarray, labels: np.ndarray, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, list]:
    """Assign whole speakers to train/val/test, stratified by gender; each split holds both genders.

    Written by hand because scikit-learn's splitters either ignore groups (train_test_split) or
    give folds, not three proportions, and none guarantees a class in every split for a handful
    of speakers.
    """
    per_speaker = pd.DataFrame({"speaker": speakers, "label": labels}).drop_duplicates("speaker")
    if per_speaker["label"].nunique() < 2:
        raise DataError(f"only {LABELS[per_speaker['label'].iloc[0]]} speakers in the data; training needs both genders")
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {s: [] for s in SPLITS}
    for label, group in per_speaker.groupby("label"):
        spk = sorted(group["speaker"])
        if len(spk) < 3:
            raise DataError(f"only {len(spk)} {LABELS[label]} speaker(s); a speaker-disjoint train/val/test split needs at least 3 per gender")
        rng.shuffle(spk)
        n_val = max(1, round(len(spk) * fractions[1]))
        n_test = max(1, round(len(spk) * fractions[2]))
        out["val"] += spk[:n_val]
        out["test"] += spk[n_val : n_val + n_test]
        out["train"] += spk[n_val + n_test :]
    return {s: sorted(v) for s, v in out.items()}


# ----------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class GridPoint:
    lr: float = 1e-3
    epochs: int = 10
    gamma: float = 0.5
    batch_size: int = 64
    step_size: int = 5  # StepLR: the seed's schedule
    augment: bool = True
    feature_set: str = "mfcc_pitch"

    @property
    def name(self) -> str:
        return f"{self.feature_set} lr={self.lr:g} ep={self.epochs} gamma={self.gamma:g} bs={self.batch_size}"


def grid(lr, epochs, gamma, batch_size, feature_sets, augment: bool = True) -> list[GridPoint]:
    """The cartesian product of the value lists."""
    return [GridPoint(float(a), int(b), float(c), int(d), augment=augment, feature_set=e)
            for e, a, b, c, d in itertools.product(feature_sets, lr, epochs, gamma, batch_size)]


# ----------------------------------------------------------------------------- training
def augment_batch(x: torch.Tensor, model: GenderCNN, gen: torch.Generator) -> torch.Tensor:
    """Train-time augmentation in feature space: time shift, noise, one time mask, one coefficient mask."""
    b, c, t, k = x.shape
    shift = torch.randint(-8, 9, (b, 1), generator=gen)
    idx = (torch.arange(t).unsqueeze(0) - shift) % t  # circular shift of frames, per window
    x = torch.gather(x, 2, idx[:, None, :, None].expand(b, c, t, k))
    x = x + 0.1 * model.std * torch.randn(x.shape, generator=gen)
    t0, tw = torch.randint(0, t, (b, 1), generator=gen), torch.randint(0, 11, (b, 1), generator=gen)
    k0, kw = torch.randint(0, k, (b, 1), generator=gen), torch.randint(0, 3, (b, 1), generator=gen)
    frames, coeffs = torch.arange(t).unsqueeze(0), torch.arange(k).unsqueeze(0)
    tmask = ((frames >= t0) & (frames < t0 + tw))[:, None, :, None]
    kmask = ((coeffs >= k0) & (coeffs < k0 + kw))[:, None, None, :]
    return torch.where(tmask | kmask, model.mean.expand_as(x), x)


@torch.no_grad()
def logits_of(model: torch.nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    x = torch.as_tensor(x)
    out = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 2)


def predict_proba(model: torch.nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """p(male) per window."""
    return torch.softmax(logits_of(model, x, batch_size), dim=1)[:, 1].numpy()


def file_level(p: np.ndarray, data: Data) -> pd.DataFrame:
    """Pool window probabilities per file (mean), as the scorer does."""
    df = pd.DataFrame({"file": data.file, "speaker": data.speaker, "y": data.y, "p": p})
    return df.groupby("file", sort=True).agg(speaker=("speaker", "first"), y=("y", "first"), p=("p", "mean")).reset_index()


def metrics(y: np.ndarray, p: np.ndarray, prefix: str) -> dict[str, float]:
    pred = (p >= 0.5).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {f"{prefix}_acc": float(accuracy_score(y, pred)), f"{prefix}_balanced_acc": float(balanced_accuracy_score(y, pred))}


@dataclass
class PointResult:
    point: GridPoint
    history: list[dict] = field(default_factory=list)  # one dict of metrics per epoch
    test: dict = field(default_factory=dict)
    per_speaker: pd.DataFrame | None = None
    confusion: np.ndarray | None = None
    state_dict: dict | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def train_point(point: GridPoint, data: Data, split: dict[str, list], seed: int = 0, threads: int | None = None, on_epoch=None) -> PointResult:
    """Train one grid point; never raises: a failure comes back as ``PointResult.error``."""
    t0 = time.perf_counter()
    result = PointResult(point)
    try:
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        real = data.augment == 0
        parts = {s: data.subset(np.isin(data.speaker, split[s]) & (real | (s == "train"))) for s in SPLITS}
        tr, va = parts["train"], parts["val"]
        x_tr, y_tr = torch.from_numpy(tr.x), torch.from_numpy(tr.y)
        model = GenderCNN(*data.cfg.shape[1:]).fit_standardisation(x_tr)
        counts = np.bincount(tr.y, minlength=2)
        # AudioMNIST is 4:1 male: weight classes so the minority counts as much as the majority
        weight = torch.tensor(len(tr.y) / (2 * np.maximum(counts, 1)), dtype=torch.float32)
        loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
        opt = torch.optim.Adam(model.parameters(), lr=point.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=point.step_size, gamma=point.gamma)
        for epoch in range(1, point.epochs + 1):
            model.train()
            order = torch.randperm(len(x_tr), generator=gen)
            total, correct, seen = 0.0, 0, 0
            for i in range(0, len(order), point.batch_size):
                idx = order[i : i + point.batch_size]
                xb, yb = x_tr[idx], y_tr[idx]
                if point.augment:
                    xb = augment_batch(xb, model, gen)
                logits = model(xb)
                loss = loss_fn(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(idx)
            sched.step()
            val_logits = logits_of(model, va.x)
            val_loss = float(loss_fn(val_logits, torch.from_numpy(va.y)))
            p_val = torch.softmax(val_logits, dim=1)[:, 1].numpy()
            row = {"train_loss": total / seen, "train_acc": correct / seen, "val_loss": val_loss, **metrics(va.y, p_val, "val")}
            result.history.append(row)
            if on_epoch:
                on_epoch(epoch, row)
        te = parts["test"]
        files = file_level(predict_proba(model, te.x), te)
        result.test = metrics(files["y"].to_numpy(), files["p"].to_numpy(), "test")
        files["correct"] = (files["p"] >= 0.5).astype(int) == files["y"]
        per_speaker = files.groupby("speaker").agg(label=("y", "first"), files=("file", "size"), acc=("correct", "mean")).reset_index()
        per_speaker["label"] = per_speaker["label"].map(dict(enumerate(LABELS)))
        result.per_speaker = per_speaker
        result.test["test_speaker_acc"] = float((per_speaker["acc"] > 0.5).mean())
        result.confusion = confusion_matrix(files["y"], (files["p"] >= 0.5).astype(int), labels=[0, 1])
        result.state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    except Exception:
        result.error = traceback.format_exc()
    result.seconds = time.perf_counter() - t0
    return result


def best(results: list[PointResult]) -> PointResult | None:
    """Highest final val_balanced_acc; ties go to the lower val_loss."""
    ok = [r for r in results if r.error is None and r.history]
    return max(ok, key=lambda r: (r.final["val_balanced_acc"], -r.final["val_loss"]), default=None)


def point_params(point: GridPoint) -> dict:
    return asdict(point)
