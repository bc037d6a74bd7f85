"""The baseline featurizer: the same librosa calls written plainly, one process, one file after another.

    python -m bench.plain_loop SRC [SRC ...] [--out FILE.npz]

SRC: an AudioMNIST-layout folder (``SRC/<speaker>/*.wav``) or a manifest CSV (a ``path`` column, relative
to the CSV's folder).

What a person would write without voiceclf: load at 16 kHz, remove DC and high-pass at 50 Hz, keep the
voiced parts (``librosa.effects.split``), then MFCC + delta + delta-delta on each 1-s window (hop 0.5 s).
A file that cannot be read is counted and skipped, as featurize does. Prints one summary line:
``plain loop: files=..., windows=..., errors=..., seconds=..., files/s=...``.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import time

import librosa
import numpy as np
import scipy.signal

SR = 16000
HIGHPASS = scipy.signal.butter(4, 50, btype="highpass", fs=SR, output="sos")


def plain_features(path: str) -> list[np.ndarray]:
    """(3, 98, 12) arrays, one per 1-s window of voiced speech."""
    y, sr = librosa.load(path, sr=SR)
    y = scipy.signal.sosfilt(HIGHPASS, y - y.mean())
    intervals = librosa.effects.split(y, top_db=35, frame_length=800, hop_length=160)
    if len(intervals) == 0:
        return []
    y = np.concatenate([y[s:e] for s, e in intervals])
    if len(y) < sr:
        lead = (sr - len(y)) // 2
        y = np.pad(y, (lead, sr - len(y) - lead))
    out = []
    for start in range(0, len(y) - sr + 1, sr // 2):
        w = y[start : start + sr]
        mfcc = librosa.feature.mfcc(y=w, sr=sr, n_mfcc=12, n_fft=400, hop_length=160, n_mels=40, center=False, lifter=22)
        d1 = librosa.feature.delta(mfcc)
        d2 = librosa.feature.delta(mfcc, order=2)
        out.append(np.stack([mfcc, d1, d2]).transpose(0, 2, 1).astype(np.float32))
    return out


def files_of(src: str) -> list[str]:
    if src.lower().endswith(".csv"):
        with open(src, newline="", encoding="utf-8-sig") as f:
            return [os.path.join(os.path.dirname(os.path.abspath(src)), row["path"]) for row in csv.DictReader(f)]
    return sorted(glob.glob(os.path.join(src, "*", "*.wav")))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.plain_loop", description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", metavar="SRC", help="AudioMNIST-layout folder (<SRC>/<speaker>/*.wav) or manifest CSV (path column)")
    p.add_argument("--out", help="save the windows here (.npz)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    files = [f for src in args.sources for f in files_of(src)]
    windows, errors = [], 0
    for f in files:
        try:
            windows += plain_features(f)
        except Exception:  # not audio, corrupt: featurize makes these errors.csv rows
            errors += 1
    if args.out:
        np.savez(args.out, features=np.stack(windows))
    seconds = time.perf_counter() - t0
    print(f"plain loop: files={len(files)}, windows={len(windows)}, errors={errors}, seconds={seconds:.1f}, files/s={len(files) / seconds:.1f}")


if __name__ == "__main__":
    main()
