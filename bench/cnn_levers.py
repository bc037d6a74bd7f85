"""What the CNN's training needs to see: held-out accuracy and training time of a few settings, leave-one-corpus-out.

Each setting trains once per held-out corpus on the other two (the speaker split of ``jobs.train --holdout-corpus``,
the epoch kept by ``val_score``), and is scored on the held-out corpus: the test of what a setting costs in accuracy.
No cross-corpus refits (they rank points, they do not change a point's training). Trainings of all settings share
one process pool, interleaved, so machine load hits them alike: compare seconds as ratios only.

    python -m bench.cnn_levers --features /work/feat/mfcc_pitch [--settings base,spk32,spk32_ep16] [--seeds 0]
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd
from joblib import Parallel, delayed

from bench import loco
from voiceclf import train as tr
from voiceclf.dataset import Data
from voiceclf.points import GridPoint, expand
from voiceclf.splits import split_speakers

SETTINGS = {
    "base": {},  # jobs/grid.toml's CNN point as it was: 8 epochs of every window
    "spk32": {"speaker_windows": 32},
    "spk64": {"speaker_windows": 64},
    "spk96": {"speaker_windows": 96},
    "spk32_ep16": {"speaker_windows": 32, "epochs": 16},
    "spk32_ep16_p4": {"speaker_windows": 32, "epochs": 16, "patience": 4},
    "ep4": {"epochs": 4},
}


def _train(point: GridPoint, data: Data, split: dict, seed: int) -> tr.PointResult:
    res = tr.train_point(point, data, split, seed=seed, threads=1)
    res.model = None
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=Path, default=Path("/work/feat/mfcc_pitch"))
    ap.add_argument("--settings", default="base,spk32,spk32_ep16")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/cnn_levers.csv"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = loco.load({"mfcc_pitch": args.features})["mfcc_pitch"]
    (base,) = expand(loco.read()["cnn"], "mfcc_pitch")
    speakers = data.speakers().drop_duplicates("speaker")
    corpora = sorted(set(speakers["corpus"]))
    names, seeds = args.settings.split(","), [int(s) for s in args.seeds.split(",")]
    tasks = [(c, name, seed, dataclasses.replace(base, **SETTINGS[name]), split_speakers(speakers, seed=seed, holdout_corpus=c))
             for seed in seeds for c in corpora for name in names]
    print(f"{len(tasks)} trainings, {args.jobs} parallel; data loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    out = Parallel(n_jobs=args.jobs, return_as="generator")(delayed(_train)(pt, data, split, seed) for _, _, seed, pt, split in tasks)
    rows = []
    for (c, name, seed, pt, _), res in zip(tasks, out):
        if res.error:
            raise SystemExit(f"{name} on {c}: {res.error}")
        rows.append({"held_out": c, "setting": name, "seed": seed, "test_score": res.test["test_score"], "val_score": res.best_epoch_metrics["val_score"],
                     "best_epoch": res.best_epoch, "epochs_run": len(res.history), "seconds": res.seconds})
        print(rows[-1], flush=True)
        pd.DataFrame(rows).to_csv(args.out, index=False)
    df = pd.DataFrame(rows)
    table = df.pivot_table(index="setting", columns="held_out", values="test_score", aggfunc="mean")
    table["mean"] = table.mean(axis=1)
    table["seconds (sum)"] = df.groupby("setting")["seconds"].sum()
    table["time ÷ base"] = table["seconds (sum)"] / table.loc["base", "seconds (sum)"] if "base" in table.index else float("nan")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
