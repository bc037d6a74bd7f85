"""Per-recording voice measures for the hard-voice view and the accuracy experiments (issue 18).

Duration, F0 statistics (librosa.yin on the loud frames: pyin gave sub-harmonic medians for men near 140 Hz on
audiomnist_az, bench/results.md) and vocal-tract cues: formants F1-F4 from LPC (librosa.lpc) and
spectral-envelope statistics, each a median over the voiced frames. Computed once per recording after the
project's own decoding (``voiceclf.audio.load``) and cached by file in a parquet table under bench/work.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from voiceclf import safeio

SR = 16000
FMIN, FMAX = 60.0, 400.0
FRAME, HOP = 1024, 256  # analysis frame (64 ms) and hop (16 ms)
LPC_FRAME = 400  # 25 ms: the textbook frame for formants
MAX_S = 8.0  # the first 8 s at most: a recording's medians need no more, and F0 tracking is the cost
COLUMNS = ["duration_s", "f0_med", "f0_p10", "f0_p90", "voiced_share", "F1", "F2", "F3", "F4", "centroid", "rolloff", "flatness"]


def formants_of_frames(frames: np.ndarray, sr: int = SR, order: int = 18, n: int = 4, max_bw_hz: float = 400.0, min_hz: float = 90.0) -> np.ndarray:
    """Formant frequencies (Hz) of each frame (rows of ``frames``), the first ``n`` LPC resonances.

    Pre-emphasis, a Hamming window, librosa.lpc of ``order`` (2 + sr/1000), the roots of the LPC polynomial
    in the upper half plane; a root is a formant when its bandwidth ``-sr/π·ln|r|`` is below ``max_bw_hz``
    and its frequency above ``min_hz``. NaN where a frame has fewer. (n_frames, n)."""
    import librosa

    x = np.asarray(frames, np.float64)
    x = np.concatenate([x[:, :1], x[:, 1:] - 0.97 * x[:, :-1]], axis=1) * np.hamming(x.shape[1])
    a = librosa.lpc(x + 1e-9 * np.random.default_rng(0).standard_normal(x.shape), order=order, axis=-1)
    out = np.full((len(x), n), np.nan)
    for i, coeffs in enumerate(a):
        if not np.all(np.isfinite(coeffs)):
            continue
        r = np.roots(coeffs)
        r = r[np.imag(r) > 0]
        f = np.angle(r) * sr / (2 * np.pi)
        bw = -sr / np.pi * np.log(np.abs(r))
        f = np.sort(f[(bw < max_bw_hz) & (f > min_hz)])[:n]
        out[i, : len(f)] = f
    return out


def loud_frames(y: np.ndarray, frame: int = FRAME, hop: int = HOP, below_peak_db: float = 25.0) -> np.ndarray:
    """Frames (centred, librosa's framing) within ``below_peak_db`` of the recording's loudest: the vowels
    that carry F0 and formants. An energy gate rather than pyin's voicing, which costs ~10x more."""
    import librosa

    rms = librosa.feature.rms(y=y, frame_length=frame, hop_length=hop)[0]
    return rms >= rms.max() * 10 ** (-below_peak_db / 20) if rms.max() > 0 else np.zeros(len(rms), bool)


def measure(y: np.ndarray, sr: int = SR) -> dict:
    """The :data:`COLUMNS` of one recording (mono float, ``sr``): F0 by librosa.yin and formants by LPC on its
    loud frames (:func:`loud_frames`), spectral statistics on the same frames."""
    import librosa

    out = dict.fromkeys(COLUMNS, np.nan)
    out["duration_s"] = len(y) / sr
    y = y[: int(MAX_S * sr)]
    if len(y) < 2 * FRAME:
        y = np.pad(y, (0, 2 * FRAME - len(y)))
    loud = loud_frames(y)
    out["voiced_share"] = float(loud.mean())
    if not loud.any():
        return out
    f0 = librosa.yin(y, fmin=FMIN, fmax=FMAX, sr=sr, frame_length=2 * FRAME, hop_length=HOP)
    n = min(len(f0), len(loud))
    f0 = f0[:n][loud[:n]]
    out.update(f0_med=float(np.median(f0)), f0_p10=float(np.percentile(f0, 10)), f0_p90=float(np.percentile(f0, 90)))
    centres = np.flatnonzero(loud) * HOP  # librosa centres frame t at t * HOP
    padded = np.pad(y, LPC_FRAME // 2)
    frames = np.stack([padded[c : c + LPC_FRAME] for c in centres if c + LPC_FRAME <= len(padded)])
    fm = formants_of_frames(frames, sr)
    for k in range(4):
        col = fm[:, k]
        out[f"F{k + 1}"] = float(np.nanmedian(col)) if np.isfinite(col).any() else np.nan
    S = np.abs(librosa.stft(y, n_fft=FRAME, hop_length=HOP))[:, : len(loud)][:, loud]
    out["centroid"] = float(np.median(librosa.feature.spectral_centroid(S=S, sr=sr, n_fft=FRAME)))
    out["rolloff"] = float(np.median(librosa.feature.spectral_rolloff(S=S, sr=sr, n_fft=FRAME)))
    out["flatness"] = float(np.median(librosa.feature.spectral_flatness(S=S)))
    return out


def measure_files(paths: list[str]) -> list[dict]:
    """Worker: :func:`measure` of each file (NaNs for one that cannot be read)."""
    from threadpoolctl import threadpool_limits

    from voiceclf import audio

    rows = []
    with threadpool_limits(limits=1):
        for p in paths:
            try:
                rows.append(measure(audio.load(p).samples))
            except Exception:
                rows.append(dict.fromkeys(COLUMNS, np.nan))
    return rows


def table(files: pd.DataFrame, cache: Path, n_jobs: int = 1, log=print, chunk: int = 16) -> pd.DataFrame:
    """``files`` (a ``file`` column of absolute paths, one row per recording) with the :data:`COLUMNS`,
    computed for files not yet in ``cache`` and cached there (written after every 20 chunks: resumable)."""
    have = pd.read_parquet(cache) if cache.exists() else pd.DataFrame({"file": pd.Series(dtype=str)})
    todo = sorted(set(files["file"]) - set(have["file"]))
    if todo:
        log(f"voice measures (yin F0, LPC formants) of {len(todo)} recordings")
        cache.parent.mkdir(parents=True, exist_ok=True)
        step = chunk * 20
        for i in range(0, len(todo), step):
            part = todo[i : i + step]
            got = Parallel(n_jobs=n_jobs)(delayed(measure_files)(part[j : j + chunk]) for j in range(0, len(part), chunk))
            new = pd.DataFrame([r for g in got for r in g]).assign(file=part)
            have = pd.concat([have, new], ignore_index=True) if len(have) else new
            safeio.write_parquet(have, cache)
            log(f"  {min(i + step, len(todo))}/{len(todo)}")
    return files.merge(have, on="file", how="left")
