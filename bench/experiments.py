"""Accuracy experiments of issue 18, offline on existing shards: leave-one-corpus-out, speaker-balanced.

    python -m bench.experiments [--features /work/feat] [--measures bench/work/voice/measures.parquet]

Methods, each trained on two corpora and tested on the third (its real recordings), then calibrated as
train calibrates (the logit's slope, fitted on the training corpora's own leave-one-corpus-out predictions):

- ``head (windows)``: the registered family as it is, the embedding head of jobs/grid.toml (logistic,
  weight decay 1e-2) trained on windows, a file's p the mean of its windows' p.
- ``pooled LR C=...``: one mean embedding per file (and per augmented variant), standardised, and
  scikit-learn's logistic regression with L2 strength 1/C, speaker-balanced sample weights.
- ``pooled LR + voice C=...``: the same with the vocal-tract measures of bench/voicefeat.py (log F0
  statistics, log formants F1-F4, spectral centroid, roll-off, flatness) appended, standardised.

Prints the hard-voice view (bench/hard.py) of each as Markdown rows.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bench import hard
from voiceclf import calibration, grid, shards
from voiceclf.config import REPO_ROOT
from voiceclf.dataset import Data
from voiceclf.metrics import per_speaker, speaker_balanced

VOICE = ["f0_med", "f0_p10", "f0_p90", "F1", "F2", "F3", "F4", "centroid", "rolloff", "flatness"]


def pooled(data: Data) -> pd.DataFrame:
    """One row per (file, variant): the mean embedding (column ``x``, an array), label, speaker, corpus."""
    df = pd.DataFrame({"file": data.file, "variant": data.variant, "speaker": data.speaker, "corpus": data.corpus, "y": data.y})
    keys = df["file"] + "\t" + df["variant"].astype(str)
    codes, uniq = pd.factorize(keys)
    sums = np.zeros((len(uniq), data.x.shape[1]))
    np.add.at(sums, codes, data.x)
    counts = np.bincount(codes)
    out = df.groupby(codes).first().reset_index(drop=True)
    out["x"] = list(sums / counts[:, None])
    return out


def weights(files: pd.DataFrame) -> np.ndarray:
    """Every speaker of a sex weighs the same, each sex half (train.sample_weights on files)."""
    spk = files["speaker"]
    w = 1.0 / spk.map(spk.value_counts()).to_numpy(float)
    for lab in (0, 1):
        m = files["y"].to_numpy() == lab
        w[m] /= w[m].sum()
    return w * len(w) / 2


def design(files: pd.DataFrame, measures: pd.DataFrame | None) -> np.ndarray:
    x = np.stack(files["x"].to_numpy())
    if measures is None:
        return x
    m = files[["file"]].merge(measures, on="file", how="left")[VOICE].to_numpy(float)
    return np.concatenate([x, np.log(np.clip(m, 1e-6, None))], axis=1)


def fit_predict(train: pd.DataFrame, test: pd.DataFrame, C: float, measures, head: str = "lr") -> np.ndarray:
    """p(male) of ``test`` by a model fitted on ``train``: ``lr`` logistic regression (L2 1/C), ``lda``
    shrinkage LDA (Ledoit-Wolf; C unused), both on standardised features."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if head == "lda":  # LDA takes no sample weights: equal priors stand for the sexes' balance
        model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto", priors=[0.5, 0.5]))
        model.fit(design(train, measures), train["y"].to_numpy())
    else:
        model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        model.fit(design(train, measures), train["y"].to_numpy(), logisticregression__sample_weight=weights(train))
    return model.predict_proba(design(test, measures))[:, 1]


def as_files(test: pd.DataFrame, p: np.ndarray) -> pd.DataFrame:
    f = test[["file", "speaker", "corpus", "y"]].copy()
    f["p"] = p
    f["correct"] = (f["p"] >= 0.5).astype(int) == f["y"]
    return f


def pooled_method(files: pd.DataFrame, held: str, C: float, measures, head: str = "lr", intercept: bool = False) -> tuple[pd.DataFrame, float]:
    """Calibrated test files of the held-out corpus, and the inner cross-corpus score (what would choose C)."""
    train = files[files["corpus"] != held]
    test = files[(files["corpus"] == held) & (files["variant"] == 0)]
    inner = {}
    for c in sorted(set(train["corpus"])):
        tt = train[(train["corpus"] == c) & (train["variant"] == 0)]
        inner[c] = as_files(tt, fit_predict(train[train["corpus"] != c], tt, C, measures, head))
    cal = calibration.fit(pd.concat(inner.values(), ignore_index=True), "inner", intercept=intercept)
    xval = float(np.mean([speaker_balanced(per_speaker(f)) for f in inner.values()]))
    return calibration.recalibrated(as_files(test, fit_predict(train, test, C, measures, head)), cal), xval


def head_method(data: Data, held: str) -> tuple[pd.DataFrame, float]:
    """The window-trained head (logistic, weight decay 1e-2) as the train job runs a grid point with ``held`` held out:
    its cross-corpus refits and calibration (grid.run_grid, one point, in this process)."""
    head = {"lr": [1e-3], "epochs": [30], "gamma": [0.5], "step_size": [10], "batch_size": [128], "hidden": [0], "weight_decay": [1e-2]}
    (main,) = grid.run_grid({"speaker_embedding": data}, {"embedding_head": head}, holdout_corpus=held, jobs=1).results
    assert main.error is None, main.error
    print(f"  head, held-out {held}: {main.calibration.fitted_on}; a={main.calibration.a:.3f}; test ECE raw {main.test['test_ece_raw']:.3f}, "
          f"carried {main.test['test_ece']:.3f}; xval ECE raw {main.xval.get('xval_ece_raw', float('nan')):.3f}, mapped {main.xval.get('xval_ece', float('nan')):.3f}", flush=True)
    return main.test_files, main.xval["xval_score"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.experiments")
    p.add_argument("--features", type=Path, default=Path("/work/feat"))
    p.add_argument("--measures", type=Path, default=REPO_ROOT / "bench" / "work" / "voice" / "measures.parquet")
    p.add_argument("--methods", default="head,pooled,voice", help="some of head,pooled,voice,lda")
    p.add_argument("--tiled", type=Path, help="npz of re-embedded recordings (files, x) replacing their variant-0 pooled embeddings")
    p.add_argument("--C", default="0.01,0.1,1")
    p.add_argument("--calibration", choices=("platt", "temperature"), default="temperature",
                   help="for the pooled methods: platt adds an intercept (the head is calibrated as train does: the slope)")
    args = p.parse_args(argv)
    platt = args.calibration == "platt"  # with an intercept; the default, temperature, fits the slope only as train does
    rows, x, cfg = shards.read(args.features / "speaker_embedding")
    data = Data.from_shards(rows, x, cfg)
    measures = pd.read_parquet(args.measures)
    spk = pd.DataFrame({"file": data.file, "speaker": data.speaker}).drop_duplicates("file")
    measures = measures.merge(spk, on="file")
    files = pooled(data)
    if args.tiled:
        z = np.load(args.tiled)
        new = dict(zip(z["files"].tolist(), z["x"]))
        m = (files["variant"] == 0) & files["file"].isin(list(new))
        files.loc[m, "x"] = pd.Series([new[f] for f in files.loc[m, "file"]], index=files.index[m])
        print(f"{int(m.sum())} recordings re-embedded from {args.tiled}")
    out = []
    methods = args.methods.split(",")
    for held in sorted(set(data.corpus)):
        runs = []
        if "head" in methods:
            runs.append(("head (windows)", *head_method(data, held)))
        if "lda" in methods:
            runs.append(("pooled shrinkage LDA", *pooled_method(files, held, 1.0, None, "lda", platt)))
        for C in map(float, args.C.split(",")):
            if "pooled" in methods:
                runs.append((f"pooled LR C={C:g}", *pooled_method(files, held, C, None, "lr", platt)))
            if "voice" in methods:
                runs.append((f"pooled LR + voice C={C:g}", *pooled_method(files, held, C, measures, "lr", platt)))
        for name, f, xval in runs:
            row = {"held_out": held, "method": f"{name} (inner xval {100 * xval:.1f})", **hard.view(hard.annotate(f, measures))}
            out.append(row)
            print(hard.markdown([row]).splitlines()[-1], flush=True)
    print()
    print(hard.markdown(out))


if __name__ == "__main__":
    from bench.experiments import main as _main

    _main()
