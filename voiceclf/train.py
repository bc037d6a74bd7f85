"""Split by speaker, train one grid point of a model family, and measure it the way it will be used.

Read top to bottom: data → split → one training loop → metrics. No MLflow here (tracking.py
logs what this returns), so a grid point can run in any worker process.

What is measured is what the product is for: labelling speakers nobody trained on. Files are
pooled from their windows; accuracy is taken per speaker, averaged within each sex, then over
the sexes ("speaker-balanced"), per corpus. ``val_score``, the mean of that over the validation
corpora (so a large corpus cannot hide a small one), picks each point's epoch. Points are ranked
by how they do on a corpus they never saw: ``xval_score`` trains the point again without each
training corpus in turn and scores that corpus; a validation split of the training corpora
rewards learning their microphones and languages (on leave-one-corpus-out, the CNN's in-corpus
validation was higher than the embedding head's while it was 11 points worse on the new corpus).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from voiceclf.config import LABELS, DataError, FeatureConfig  # noqa: F401 (DataError: train.DataError, as before)
from voiceclf.model import build_model

SPLITS = ("train", "val", "test")
FAMILIES = ("cnn", "embedding_head")


# ----------------------------------------------------------------------------- data
@dataclass
class Data:
    """Windows of one FeatureConfig with their labels and groups.

    x : (N, *cfg.shape) float32 windows.  y : (N,) int64, 0 female / 1 male.
    speaker : (N,) speaker ids, unique across corpora.  corpus : (N,) corpus names.
    file : (N,) one id per source file (windows are pooled per file when scoring).
    variant : (N,) 0 for a recording's own windows, k > 0 for its k-th augmented variant
        (training only: validation and test see real recordings).
    speech_s : (N,) seconds of its recording's speech each window adds to the windows before it (overlapping
        windows count their shared speech once), so a sum over windows is seconds of speech; None when unknown.
    """

    x: np.ndarray
    y: np.ndarray
    speaker: np.ndarray
    corpus: np.ndarray
    file: np.ndarray
    variant: np.ndarray
    cfg: FeatureConfig
    speaker_level: bool = True  # False: no speaker ids, the split falls back to files (optimistic)
    speech_s: np.ndarray | None = None

    @classmethod
    def from_shards(cls, rows: pd.DataFrame, x: np.ndarray, cfg: FeatureConfig) -> "Data":
        if rows["label"].isna().any():
            n = int(rows["label"].isna().sum())
            raise DataError(f"{n} windows have no label; training needs labelled features (featurize a labelled corpus)")
        unknown = set(rows["label"]) - set(LABELS)
        if unknown:
            raise DataError(f"unknown labels {sorted(unknown)}; expected {LABELS}")
        corpus = rows["corpus"].astype(str)
        file = (rows["source"] + "/" + rows["path"]).to_numpy()
        speaker_level = bool(rows["speaker"].notna().all())
        if speaker_level:
            # shards name speakers "<corpus>/<id>"; older shards gave the corpus's own id only
            spk = rows["speaker"].astype(str)
            prefixed = np.array([s.startswith(c + "/") for s, c in zip(spk, corpus)], dtype=bool)
            speaker = spk.where(prefixed, corpus + "/" + spk).to_numpy()
        else:
            speaker = file
        y = rows["label"].map({lab: i for i, lab in enumerate(LABELS)}).to_numpy(np.int64)
        variant = rows["variant"].to_numpy(np.int8)
        speech = new_speech_s(file, variant, rows["offset_s"].to_numpy(), rows["speech_s"].to_numpy()) if {"offset_s", "speech_s"} <= set(rows) else None
        return cls(x, y, speaker, corpus.to_numpy(), file, variant, cfg, speaker_level, speech)

    def subset(self, mask: np.ndarray) -> "Data":
        return Data(self.x[mask], self.y[mask], self.speaker[mask], self.corpus[mask], self.file[mask], self.variant[mask], self.cfg,
                    self.speaker_level, None if self.speech_s is None else self.speech_s[mask])

    def speakers(self) -> pd.DataFrame:
        """One row per speaker: speaker, label (int), corpus."""
        return pd.DataFrame({"speaker": self.speaker, "label": self.y, "corpus": self.corpus}).drop_duplicates("speaker")

    def fingerprint(self) -> str:
        """A short hash of which windows (files, labels) and config this data is."""
        h = hashlib.sha256(self.cfg.to_json().encode())
        for f, lab in sorted(set(zip(self.file.tolist(), self.y.tolist()))):
            h.update(f"{f}\t{lab}\n".encode())
        return h.hexdigest()[:16]


def new_speech_s(file: np.ndarray, variant: np.ndarray, offset_s: np.ndarray, speech_s: np.ndarray) -> np.ndarray:
    """Per window, the seconds of speech ``[offset_s, offset_s + speech_s]`` adds to the earlier windows of the same
    recording (``file``, ``variant``): windows overlap by half, so summing ``speech_s`` would count speech twice.

    Returns (N,) float64 seconds; its sum over a recording's windows is the length of the union of their speech.
    """
    df = pd.DataFrame({"key": pd.Series(file).astype(str) + "\x00" + pd.Series(variant).astype(str),
                       "start": np.asarray(offset_s, dtype=np.float64)})
    df["end"] = df["start"] + np.asarray(speech_s, dtype=np.float64)
    df = df.sort_values(["key", "start"], kind="stable")
    reached = df.groupby("key", sort=False)["end"].cummax().groupby(df["key"], sort=False).shift()  # furthest end so far
    added = (df["end"] - np.maximum(df["start"], reached.fillna(-np.inf))).clip(lower=0.0)
    out = np.zeros(len(df))
    out[df.index.to_numpy()] = added.to_numpy()
    return out


def split_speakers(speakers: pd.DataFrame, fractions=(0.7, 0.15, 0.15), seed: int = 0, holdout_corpus: str | None = None) -> dict[str, list]:
    """Assign whole speakers to train/val/test, stratified by corpus × sex.

    ``speakers`` has one row per speaker with ``speaker``, ``label`` and ``corpus``. With
    ``holdout_corpus`` every speaker of that corpus is the test set and the others are split
    into train and validation in proportion. A corpus × sex group of fewer than 3 speakers goes
    to training whole (one speaker cannot stand for a group in three splits).

    Written by hand because scikit-learn's group splitters give k folds, not three proportions
    stratified by two variables, and none guarantees both sexes in every split for a handful of speakers.
    """
    spk = speakers.drop_duplicates("speaker")
    if spk["label"].nunique() < 2:
        raise DataError(f"only {LABELS[spk['label'].iloc[0]]} speakers in the data; training needs both sexes")
    out: dict[str, list] = {s: [] for s in SPLITS}
    fr = np.asarray(fractions, float)
    if holdout_corpus is not None:
        if holdout_corpus not in set(spk["corpus"]):
            raise DataError(f"the held-out corpus {holdout_corpus!r} is not in the data; corpora: {', '.join(sorted(set(spk['corpus'])))}")
        out["test"] = sorted(spk.loc[spk["corpus"] == holdout_corpus, "speaker"])
        spk = spk[spk["corpus"] != holdout_corpus]
        fr = np.array([fr[0], fr[1], 0.0]) / (fr[0] + fr[1])
    rng = np.random.default_rng(seed)
    for _, group in spk.sort_values(["corpus", "label", "speaker"]).groupby(["corpus", "label"], sort=True):
        ids = list(group["speaker"])
        if len(ids) < 3:
            out["train"] += ids
            continue
        rng.shuffle(ids)
        n_val = max(1, round(len(ids) * fr[1]))
        n_test = max(1, round(len(ids) * fr[2])) if fr[2] > 0 else 0
        out["val"] += ids[:n_val]
        out["test"] += ids[n_val : n_val + n_test]
        out["train"] += ids[n_val + n_test :]
    labels = dict(zip(speakers["speaker"], speakers["label"]))
    for s in SPLITS:
        missing = set(range(len(LABELS))) - {labels[x] for x in out[s]}
        if missing:
            raise DataError(f"the {s} split has no {LABELS[min(missing)]} speaker; a speaker-disjoint split needs at least 3 "
                            "speakers of each sex (in one corpus) outside the held-out corpus")
    return {s: sorted(v) for s, v in out.items()}


def cross_corpus_splits(split: dict[str, list], speakers: pd.DataFrame) -> dict[str, dict[str, list]]:
    """Leave-one-corpus-out inside the training corpora: for each corpus of the train and validation
    speakers, a split that trains (and picks epochs) on the other corpora and tests on all of its speakers.

    Empty when fewer than two corpora train. A corpus is left out of the rotation when the others
    cannot give both sexes to training and validation.
    """
    corpus_of = dict(zip(speakers["speaker"], speakers["corpus"]))
    label_of = dict(zip(speakers["speaker"], speakers["label"]))
    seen = split["train"] + split["val"]
    corpora = sorted({corpus_of[s] for s in seen})
    out = {}
    if len(corpora) < 2:
        return out
    for c in corpora:
        sub = {"train": [s for s in split["train"] if corpus_of[s] != c], "val": [s for s in split["val"] if corpus_of[s] != c],
               "test": sorted(s for s in seen if corpus_of[s] == c)}
        if all({label_of[s] for s in sub[k]} == {0, 1} for k in SPLITS):
            out[c] = sub
    return out


def cross_corpus_score(results: dict[str, "PointResult"]) -> dict[str, float]:
    """``xval_score``: the mean over training corpora of the speaker-balanced accuracy of the model
    trained without that corpus; ``xval_worst_corpus`` its minimum; ``xval_speaker_bacc.<corpus>`` each."""
    per = {c: r.test["test_score"] for c, r in results.items()}
    out = {f"xval_speaker_bacc.{c}": v for c, v in sorted(per.items())}
    if per:
        out["xval_score"] = float(np.mean(list(per.values())))
        out["xval_worst_corpus"] = float(np.min(list(per.values())))
    return out


# ----------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class GridPoint:
    """One point of the grid: a model family on a feature set and its hyperparameters."""

    feature_set: str = "mfcc_pitch"
    lr: float = 1e-3
    epochs: int = 10
    gamma: float = 0.5
    batch_size: int = 64
    step_size: int = 5  # StepLR: the seed's schedule
    weight_decay: float = 0.0
    hidden: int = 0  # embedding head: 0 = logistic regression, else one hidden layer of this width
    feature_noise: bool = True  # train-time perturbation in feature space (CNN: shift/noise/masks; head: noise)
    balance: str = "speaker"  # "speaker": every speaker weighs the same in an epoch; "class": only the sexes are balanced
    # embedding head only: "adam" trains on windows (the epochs above); "lbfgs" fits a logistic regression on one mean
    # embedding per recording (and per augmented variant) with L2 strength 1/C, to convergence (fit_pooled_logistic)
    solver: str = "adam"
    C: float = 1e-3
    # windows an epoch draws per training speaker (0: as many as the training split holds). With speaker-balanced
    # draws, what an epoch teaches is how many voices it sees, not how many windows a voice has (RAVDESS: ~760 each)
    speaker_windows: int = 0
    patience: int = 0  # stop after this many epochs without a better val_score (0: train every epoch)

    @property
    def family(self) -> str:
        return FeatureConfig.for_feature_set(self.feature_set).family

    @property
    def name(self) -> str:
        if self.solver == "lbfgs":
            return f"{self.feature_set} pooled logistic C={self.C:g}"
        extra = f" hidden={self.hidden} wd={self.weight_decay:g}" if self.family == "embedding_head" else f" gamma={self.gamma:g}"
        extra += f" spk_win={self.speaker_windows}" if self.speaker_windows else ""
        extra += f" patience={self.patience}" if self.patience else ""
        return f"{self.feature_set} lr={self.lr:g} ep={self.epochs} bs={self.batch_size}{extra}"


#: Hyperparameters a grid file may list per family (each a list of values), and their types.
GRID_KEYS = {"lr": float, "epochs": int, "gamma": float, "batch_size": int, "step_size": int, "weight_decay": float,
             "hidden": int, "feature_noise": bool, "balance": str, "solver": str, "C": float, "speaker_windows": int, "patience": int}
#: What an lbfgs point ignores: set to the defaults, so the grid trains each lbfgs point once
_LBFGS_IGNORES = ("lr", "epochs", "gamma", "batch_size", "step_size", "weight_decay", "feature_noise", "speaker_windows", "patience")


def grid(values: dict[str, list], feature_set: str) -> list[GridPoint]:
    """The cartesian product of the value lists for one feature set; keys not given keep their defaults."""
    unknown = set(values) - set(GRID_KEYS)
    if unknown:
        raise DataError(f"unknown grid key(s) {sorted(unknown)}; expected some of {sorted(GRID_KEYS)}")
    keys = sorted(values)
    points = [GridPoint(feature_set=feature_set, **{k: GRID_KEYS[k](v) for k, v in zip(keys, combo)})
              for combo in itertools.product(*(values[k] for k in keys))]
    bad = {p.solver for p in points} - {"adam", "lbfgs"}
    if bad:
        raise DataError(f"unknown solver(s) {sorted(bad)}; expected adam or lbfgs")
    if any(p.solver == "lbfgs" and p.family != "embedding_head" for p in points):
        raise DataError("solver lbfgs fits the embedding head only (feature set speaker_embedding)")
    out: list[GridPoint] = []
    for p in points:  # an lbfgs point is a logistic regression: hidden layers and the epoch settings do not apply
        if p.solver == "lbfgs":
            if p.hidden:
                continue
            p = dataclasses.replace(p, **{k: getattr(GridPoint, k) for k in _LBFGS_IGNORES})
        else:  # and C is lbfgs's alone
            p = dataclasses.replace(p, C=GridPoint.C)
        if p not in out:
            out.append(p)
    return out


# ----------------------------------------------------------------------------- metrics
def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("device cuda: torch sees no CUDA device (a CPU build of torch, or no GPU)")
    return torch.device(name)


@torch.no_grad()
def logits_of(model: torch.nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits on the CPU, computed on the model's device in batches."""
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(x)
    out = [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 2)


def predict_proba(model: torch.nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """p(male) per window."""
    return torch.softmax(logits_of(model, x, batch_size), dim=1)[:, 1].numpy()


def file_level(p: np.ndarray, data: Data) -> pd.DataFrame:
    """Pool window probabilities per file (mean), as the scorer does."""
    df = pd.DataFrame({"file": data.file, "speaker": data.speaker, "corpus": data.corpus, "y": data.y, "p": p})
    files = df.groupby("file", sort=True).agg(speaker=("speaker", "first"), corpus=("corpus", "first"), y=("y", "first"), p=("p", "mean")).reset_index()
    files["correct"] = (files["p"] >= 0.5).astype(int) == files["y"]
    return files


def per_speaker(files: pd.DataFrame) -> pd.DataFrame:
    """One row per speaker: corpus, label, files, acc (share of the speaker's files labelled right)."""
    out = files.groupby("speaker").agg(corpus=("corpus", "first"), label=("y", "first"), files=("file", "size"), acc=("correct", "mean")).reset_index()
    out["label"] = out["label"].map(dict(enumerate(LABELS)))
    return out


def speaker_balanced(speakers: pd.DataFrame) -> float:
    """Accuracy per speaker, averaged within each sex, then over the sexes present."""
    return float(speakers.groupby("label")["acc"].mean().mean()) if len(speakers) else float("nan")


def evaluate(files: pd.DataFrame, prefix: str) -> dict[str, float]:
    """File-level and speaker-balanced metrics, overall and per corpus (``<metric>.<corpus>``).

    ``<prefix>_score`` is the mean over corpora of the speaker-balanced accuracy (the selection
    metric for ``val``); ``<prefix>_worst_corpus`` its minimum.
    """
    out: dict[str, float] = {}
    spk = per_speaker(files)

    # sklearn where used: its import (~0.8 s, scipy.stats) would otherwise be paid by score, which imports this module
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    def basic(f: pd.DataFrame, s: pd.DataFrame, suffix: str) -> None:
        pred = (f["p"] >= 0.5).astype(int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[f"{prefix}_acc{suffix}"] = float(accuracy_score(f["y"], pred))
            out[f"{prefix}_balanced_acc{suffix}"] = float(balanced_accuracy_score(f["y"], pred))
        out[f"{prefix}_speaker_bacc{suffix}"] = speaker_balanced(s)

    basic(files, spk, "")
    out[f"{prefix}_speaker_acc"] = float((spk["acc"] > 0.5).mean()) if len(spk) else float("nan")
    corpora = sorted(set(files["corpus"]))
    for c in corpora:
        basic(files[files["corpus"] == c], spk[spk["corpus"] == c], f".{c}")
    per_corpus = [out[f"{prefix}_speaker_bacc.{c}"] for c in corpora]
    out[f"{prefix}_score"] = float(np.mean(per_corpus)) if per_corpus else float("nan")
    out[f"{prefix}_worst_corpus"] = float(np.min(per_corpus)) if per_corpus else float("nan")
    return out


# ----------------------------------------------------------------------------- training
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
    xval: dict = field(default_factory=dict)  # cross-corpus validation (see cross_corpus_score), when two or more corpora train
    per_speaker: pd.DataFrame | None = None
    confusion: np.ndarray | None = None
    test_files: pd.DataFrame | None = None  # file-level predictions on the test split (file, speaker, corpus, y, p, correct)
    val_files: pd.DataFrame | None = None  # the same on the validation split, kept epoch
    test_files_raw: pd.DataFrame | None = None  # test_files before calibration (set with the calibration)
    calibration: object | None = None  # calibration.Calibration fitted by the grid (grid.train_grid)
    model: torch.nn.Module | None = None
    seconds: float = 0.0
    started_s: float = 0.0  # wall clock (time.time()) when the training began, in whichever process it ran
    error: str | None = None

    @property
    def final(self) -> dict:
        """Metrics of the kept epoch."""
        return self.history[self.best_epoch - 1] if self.history else {}

    @property
    def selection_score(self) -> float:
        """What the grid ranks points by: ``xval_score`` when corpora could be left out in turn, else ``val_score``."""
        return self.xval.get("xval_score", self.final.get("val_score", float("nan")))


def parts_of(data: Data, split: dict[str, list]) -> dict[str, Data]:
    """The split's windows: augmented variants in training only."""
    real = data.variant == 0
    return {s: data.subset(np.isin(data.speaker, split[s]) & (real | (s == "train"))) for s in SPLITS}


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
    result.val = {k: v for k, v in result.final.items() if k.startswith("val_")}
    result.val_files = file_level(predict_proba(model, va.x), va)
    set_test(result, file_level(predict_proba(model, te.x), te))
    result.model = model
    result.seconds = time.perf_counter() - t0
    return result


def epoch_row(model: torch.nn.Module, va: Data, train_loss: float, train_acc: float) -> dict:
    """One row of a point's history: its training figures and the validation loss and metrics."""
    val_logits = logits_of(model, va.x)
    val_loss = float(torch.nn.functional.cross_entropy(val_logits, torch.from_numpy(va.y))) if len(va.y) else float("nan")
    p_val = torch.softmax(val_logits, dim=1)[:, 1].numpy()
    return {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, **evaluate(file_level(p_val, va), "val")}


def set_test(result: PointResult, files: pd.DataFrame) -> None:
    """The test metrics, per-speaker table and confusion matrix of ``result`` from its test files' p (raw or calibrated)."""
    from sklearn.metrics import confusion_matrix

    result.test_files = files
    result.test = evaluate(files, "test")
    result.per_speaker = per_speaker(files)
    result.confusion = confusion_matrix(files["y"], (files["p"] >= 0.5).astype(int), labels=[0, 1])


def best(results: list[PointResult]) -> PointResult | None:
    """Highest selection score (cross-corpus ``xval_score``, else ``val_score``); ties go to the higher
    ``val_score``, then the lower val_loss."""
    ok = [r for r in results if r.error is None and r.history]
    return max(ok, key=lambda r: (r.selection_score, r.final["val_score"], -r.final["val_loss"]), default=None)


def point_params(point: GridPoint) -> dict:
    return {**asdict(point), "family": point.family}
