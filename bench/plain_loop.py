"""The baseline featurizer: the same librosa calls written plainly, one process, one file after another.

    python -m bench.plain_loop DATA_DIR [--out FILE.npz]

What a person would write without voiceclf: load at 16 kHz, remove DC and high-pass at 50 Hz, keep the
voiced parts (``librosa.effects.split``), then MFCC + delta + delta-delta on each 1-s window (hop 0.5 s).
Prints one summary line: ``plain loop: files=..., windows=..., seconds=..., files/s=...``.
"""
from __future__ import annotations

import argparse
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.plain_loop", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="AudioMNIST-layout folder: <data>/<speaker>/*.wav")
    p.add_argument("--out", help="save the windows here (.npz)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    files = sorted(glob.glob(os.path.join(args.data, "*", "*.wav")))
    windows = []
    for f in files:
        windows += plain_features(f)
    if args.out:
        np.savez(args.out, features=np.stack(windows))
    seconds = time.perf_counter() - t0
    print(f"plain loop: files={len(files)}, windows={len(windows)}, seconds={seconds:.1f}, files/s={len(files) / seconds:.1f}")


if __name__ == "__main__":
    main()
