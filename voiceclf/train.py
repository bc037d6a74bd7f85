"""Train one grid point: the training loop, read top to bottom, keeping the epoch with the best ``val_score``, and
what the kept model does on the validation and test speakers (:class:`PointResult`); the ranking of points (:func:`best`).

No MLflow here (run_log decides what of a result is logged), so a grid point can run in any worker process.
The data (:mod:`voiceclf.dataset`), splits (:mod:`voiceclf.splits`), metrics (:mod:`voiceclf.metrics`) and the
points themselves (:mod:`voiceclf.points`) each have their own module.

Points are ranked by how they do on a corpus they never saw: ``xval_score`` trains the point again without each
training corpus in turn and scores that corpus (:mod:`voiceclf.grid` runs those trainings); a validation split of
the training corpora rewards learning their microphones and languages (on leave-one-corpus-out, the CNN's
in-corpus validation was higher than the embedding head's while it was 11 points worse on the new corpus).
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from voiceclf.dataset import Data
from voiceclf.metrics import evaluate, file_level, per_speaker
from voiceclf.model import build_model, logits_of, p_male, p_male_of
from voiceclf.points import GridPoint
from voiceclf.splits import parts_of


def perturb(x: torch.Tensor, model: torch.nn.Module, gen: torch.Generator) -> torch.Tensor:
    """Train-time perturbation in feature space.

    CNN windows (N, 3, T, K): circular time shift, noise, one time mask, one coefficient mask.
    Embeddings (N, D): noise of a tenth of each dimension's spread.
    """
    std, mean = model.std.cpu(), model.mean.cpu()
    noise = 0.1 * std * torch.randn(x.shape, generator=gen)
    if x.dim() == 2:
        return x + noise
    b, c, t, k = x.shape
    shift = torch.randint(-8, 9, (b, 1), generator=gen)
    idx = (torch.arange(t).unsqueeze(0) - shift) % t  # circular shift of frames, per window
    x = torch.gather(x, 2, idx[:, None, :, None].expand(b, c, t, k)) + noise
    t0, tw = torch.randint(0, t, (b, 1), generator=gen), torch.randint(0, 11, (b, 1), generator=gen)
    k0, kw = torch.randint(0, k, (b, 1), generator=gen), torch.randint(0, 3, (b, 1), generator=gen)
    frames, coeffs = torch.arange(t).unsqueeze(0), torch.arange(k).unsqueeze(0)
    tmask = ((frames >= t0) & (frames < t0 + tw))[:, None, :, None]
    kmask = ((coeffs >= k0) & (coeffs < k0 + kw))[:, None, None, :]
    return torch.where(tmask | kmask, mean.expand_as(x), x)


def sample_weights(data: Data, balance: str) -> np.ndarray:
    """How likely each training window is drawn: each sex weighs half; with ``speaker`` every speaker
    of a sex weighs the same, however many windows (files, variants) it has.

    Speakers are what a model must generalise over: a corpus with 60 clips per speaker would
    otherwise teach 60 times more about its few voices than one with a clip per speaker.
    """
    groups = pd.Series(data.speaker if balance == "speaker" else data.y)
    w = 1.0 / groups.map(groups.value_counts()).to_numpy(float)
    for label in (0, 1):
        m = data.y == label
        w[m] /= max(w[m].sum(), 1e-12)
    return w


def windows_per_epoch(data: Data, point: GridPoint) -> int:
    """Windows one epoch draws: all of the training split's, or ``point.speaker_windows`` per speaker if fewer."""
    if not point.speaker_windows:
        return len(data.y)
    return min(len(data.y), point.speaker_windows * len(np.unique(data.speaker)))


@dataclass
class PointResult:
    point: GridPoint
    history: list[dict] = field(default_factory=list)  # one dict of metrics per epoch
    best_epoch: int = 0  # the epoch whose weights are kept (highest val_score)
    val: dict = field(default_factory=dict)  # validation metrics of the kept epoch
    test: dict = field(default_factory=dict)
    xval: dict = field(default_factory=dict)  # cross-corpus validation (metrics.cross_corpus_score), when two or more corpora train
    per_speaker: pd.DataFrame | None = None
    confusion: np.ndarray | None = None
    test_files: pd.DataFrame | None = None  # file-level predictions on the test split (file, speaker, corpus, y, p, correct)
    val_files: pd.DataFrame | None = None  # the same on the validation split, kept epoch
    test_files_raw: pd.DataFrame | None = None  # test_files before calibration (set with the calibration)
    calibration: object | None = None  # calibration.Calibration fitted by the grid (champion.calibrate_point)
    model: torch.nn.Module | None = None
    seconds: float = 0.0
    started_s: float = 0.0  # wall clock (time.time()) when the training began, in whichever process it ran
    error: str | None = None

    @property
    def best_epoch_metrics(self) -> dict:
        """The history row of the kept epoch (``best_epoch``): its training and validation metrics."""
        return self.history[self.best_epoch - 1] if self.history else {}

    @property
    def selection_score(self) -> float:
        """What the grid ranks points by: ``xval_score`` when corpora could be left out in turn, else ``val_score``."""
        return self.xval.get("xval_score", self.best_epoch_metrics.get("val_score", float("nan")))


def train_point(point: GridPoint, data: Data, split: dict[str, list], seed: int = 0, threads: int | None = None, on_epoch=None, device: str = "cpu") -> PointResult:
    """Train one grid point, keeping the epoch with the best ``val_score``; never raises: a failure
    comes back as ``PointResult.error``.

    Batches are drawn and perturbed on the CPU (one random stream whatever the device), then moved
    to ``device``; the returned model is on the CPU.
    """
    t0 = time.perf_counter()
    result = PointResult(point, started_s=time.time())
    try:
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        parts = parts_of(data, split)
        tr, va = parts["train"], parts["val"]
        if point.solver == "lbfgs":
            from voiceclf.pooled import fit_pooled_logistic

            model = fit_pooled_logistic(point, tr)
            row = epoch_row(model, va, float("nan"), float("nan"))
            result.history.append(row)
            result.best_epoch = 1
            if on_epoch:
                on_epoch(1, row)
            return _finish(result, model, va, parts["test"], t0)
        x_tr, y_tr = torch.from_numpy(tr.x), torch.from_numpy(tr.y)
        dev = torch.device(device)
        model = build_model(data.cfg, hidden=point.hidden).fit_standardisation(x_tr).to(dev)
        weights = torch.from_numpy(sample_weights(tr, point.balance))
        loss_fn = torch.nn.CrossEntropyLoss()
        opt = torch.optim.Adam(model.parameters(), lr=point.lr, weight_decay=point.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=point.step_size, gamma=point.gamma)
        per_epoch = windows_per_epoch(tr, point)
        best_key, best_state = None, None
        for epoch in range(1, point.epochs + 1):
            if point.patience and epoch - result.best_epoch > point.patience:
                break  # early stopping: the kept epoch is the best one either way
            model.train()
            # an epoch draws as many windows as there are, by the balance weights, or speaker_windows per speaker
            order = torch.multinomial(weights, per_epoch, replacement=True, generator=gen)
            total, correct, seen = 0.0, 0, 0
            for i in range(0, len(order), point.batch_size):
                idx = order[i : i + point.batch_size]
                xb, yb = x_tr[idx], y_tr[idx]
                if point.feature_noise:
                    xb = perturb(xb, model, gen)
                xb, yb = xb.to(dev), yb.to(dev)
                logits = model(xb)
                loss = loss_fn(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(idx)
            sched.step()
            row = epoch_row(model, va, total / seen, correct / seen)
            val_loss = row["val_loss"]
            result.history.append(row)
            key = (row["val_score"], -val_loss)
            if best_key is None or key > best_key:
                best_key, best_state, result.best_epoch = key, {k: v.detach().clone() for k, v in model.state_dict().items()}, epoch
            if on_epoch:
                on_epoch(epoch, row)
        model.load_state_dict(best_state)
        return _finish(result, model, va, parts["test"], t0)
    except Exception:
        result.error = traceback.format_exc()
    result.seconds = time.perf_counter() - t0
    return result


def _finish(result: PointResult, model: torch.nn.Module, va: Data, te: Data, t0: float) -> PointResult:
    """The kept model's validation and test predictions and metrics."""
    model = model.cpu().eval()
    result.val = {k: v for k, v in result.best_epoch_metrics.items() if k.startswith("val_")}
    result.val_files = file_level(p_male(model, va.x), va)
    set_test(result, file_level(p_male(model, te.x), te))
    result.model = model
    result.seconds = time.perf_counter() - t0
    return result


def epoch_row(model: torch.nn.Module, va: Data, train_loss: float, train_acc: float) -> dict:
    """One row of a point's history: its training figures and the validation loss and metrics."""
    val_logits = logits_of(model, va.x)
    val_loss = float(torch.nn.functional.cross_entropy(val_logits, torch.from_numpy(va.y))) if len(va.y) else float("nan")
    return {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, **evaluate(file_level(p_male_of(val_logits), va), "val")}


def set_test(result: PointResult, files: pd.DataFrame) -> None:
    """The test metrics, per-speaker table and confusion matrix of ``result`` from its test files' p (raw or calibrated)."""
    from sklearn.metrics import confusion_matrix

    result.test_files = files
    result.test = evaluate(files, "test")
    result.per_speaker = per_speaker(files)
    result.confusion = confusion_matrix(files["y"], (files["p"] >= 0.5).astype(int), labels=[0, 1])


def rank_key(result: PointResult) -> tuple[float, float, float]:
    """How points compare, higher is better: the selection score (cross-corpus ``xval_score``, else ``val_score``),
    then ``val_score``, then the lower val_loss."""
    return (result.selection_score, result.best_epoch_metrics["val_score"], -result.best_epoch_metrics["val_loss"])


def best(results: list[PointResult | None]) -> PointResult | None:
    """The point with the highest :func:`rank_key` among those that trained (the first of equals), None if none did."""
    ok = [r for r in results if r is not None and r.error is None and r.history]
    return max(ok, key=rank_key, default=None)
