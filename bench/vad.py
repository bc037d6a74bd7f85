"""Speech detection: which rule rejects what is not a voice and keeps every real recording?

    .venv/bin/python -m bench.vad [--limit N] [--jit-sample N] [--out bench/results.md]

Candidates, each a file-level verdict on the cleaned waveform (``audio.load``), as featurize sees it:
- **energy** (before issue 13.11): frames within ``top_db`` of the loudest, peak above ``silence_peak_dbfs``;
- **voicing**: energy, plus seconds of frames whose normalised autocorrelation (window-corrected, 40 ms
  Hann frames, hop 20 ms) has a local peak >= 0.5 at a lag of 60–400 Hz: periodicity, as in a pitch tracker;
- **silero**: seconds of 32-ms chunks with p(speech) >= `FeatureConfig.vad_threshold` from Silero VAD (``voiceclf.vad``: the wheel's
  safetensors weights in a torch module written out here);
- **silero-jit**: the wheel's TorchScript model, run as its own package runs it (chunk by chunk), on a sample
  only: it is 15× slower. It loads a program, so only from the pinned wheel and after its sha256 is checked.

Inputs: every file of the three shared corpora (skipped with a message when ``../shared/data`` is absent)
and generated non-voice audio written to WAV and decoded by the real decoder (noises at three levels, random
bytes after a valid header, hum, tones, a sweep, chords, clicks, dithered silence), plus speech that must
be kept (synthetic voices quiet or at 10/5/0 dB SNR in noise, and real speech mixed with noise when the
corpora are there). The Markdown section is written between markers into ``--out``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft
import soundfile as sf

from voiceclf import audio, features, synth, vad
from voiceclf.config import REPO_ROOT, FeatureConfig

SR = 16000
JIT_SHA256 = "e1122837f4154c511485fe0b9c64455f7b929c96fbb8d79fbdb336383ebd3720"  # silero_vad/data/silero_vad.jit, 6.2.3
MIN_SPEECH_S = (0.05, 0.1, 0.2, 0.5)  # verdict thresholds tried: seconds of speech a file must hold
P_SPEECH = (0.5, 0.3, 0.2)  # p(speech) a 32-ms chunk needs to count as speech (Silero's own default: 0.5)
CHOSEN_S, CHOSEN_P = FeatureConfig().vad_min_speech_s, FeatureConfig().vad_threshold
BEGIN, END = "<!-- bench.vad: begin -->", "<!-- bench.vad: end -->"


# -- candidates ---------------------------------------------------------------------------
def voicing_seconds(y: np.ndarray, cfg: FeatureConfig, frame: int = 640, hop: int = 320, threshold: float = 0.5) -> float:
    """Seconds of energetic frames with a normalised-autocorrelation peak >= threshold at 60–400 Hz."""
    if len(y) < frame:
        y = np.pad(y, (0, frame - len(y)))
    iv = features.voiced_intervals(y, cfg)
    if len(iv) == 0:
        return 0.0
    frames = np.lib.stride_tricks.sliding_window_view(y, frame)[::hop]
    centres = np.arange(len(frames)) * hop + frame // 2
    k = np.searchsorted(iv[:, 0], centres, side="right") - 1
    energetic = (k >= 0) & (centres < iv[np.maximum(k, 0), 1])
    win = np.hanning(frame).astype(np.float32)
    spec = scipy.fft.rfft(frames[energetic] * win, n=2 * frame, axis=-1)
    ac = scipy.fft.irfft(np.abs(spec) ** 2, axis=-1)[:, :frame]
    wac = scipy.fft.irfft(np.abs(scipy.fft.rfft(win, n=2 * frame)) ** 2)[:frame]
    r = ac / np.maximum(ac[:, :1], 1e-12) / np.maximum(wac / wac[0], 1e-3)  # Boersma's window correction
    lo, hi = SR // 400, SR // 60
    mid = r[:, lo : hi + 1]
    peak = (mid[:, 1:-1] > mid[:, :-2]) & (mid[:, 1:-1] >= mid[:, 2:])
    best = np.where(peak, mid[:, 1:-1], 0).max(axis=1) if len(mid) else np.zeros(0)
    return float((best >= threshold).sum() * hop / SR)


_jit = None


def silero_jit_seconds(y: np.ndarray) -> float:
    global _jit
    import torch

    if _jit is None:
        path = vad.weights_path().parent / "silero_vad.jit"
        found = hashlib.sha256(path.read_bytes()).hexdigest()
        if found != JIT_SHA256:
            raise SystemExit(f"{path}: sha256 {found[:12]}…, expected {JIT_SHA256[:12]}… (silero-vad 6.2.3)")
        _jit = torch.jit.load(str(path), map_location="cpu").eval()
    _jit.reset_states()
    y = np.concatenate([y, np.zeros((-len(y)) % vad.CHUNK, np.float32)])
    with torch.no_grad():
        p = [float(_jit(torch.from_numpy(y[i : i + vad.CHUNK])[None], SR)) for i in range(0, len(y), vad.CHUNK)]
    return float((np.array(p) >= CHOSEN_P).sum() * vad.CHUNK / SR)


def measure(y: np.ndarray, cfg: FeatureConfig, jit: bool) -> dict:
    t0 = time.perf_counter()
    energy = features.speech_track(y, cfg) is not None
    t1 = time.perf_counter()
    voiced = voicing_seconds(y, cfg)
    t2 = time.perf_counter()
    p = vad.speech_probabilities(y)
    t3 = time.perf_counter()
    features.extract(y, cfg)
    t4 = time.perf_counter()
    vad.speech_seconds(y, threshold=CHOSEN_P, enough_s=CHOSEN_S)
    t5 = time.perf_counter()
    row = dict(duration_s=len(y) / SR, energy=energy, voicing_s=voiced, silero_s=float((p >= CHOSEN_P).sum() * vad.CHUNK / SR),
               **{f"silero_s_{q}": float((p >= q).sum() * vad.CHUNK / SR) for q in P_SPEECH},
               silero_max=float(p.max()), ms_energy=(t1 - t0) * 1e3, ms_voicing=(t2 - t1) * 1e3,
               ms_silero=(t3 - t2) * 1e3, ms_extract=(t4 - t3) * 1e3, ms_silero_stop=(t5 - t4) * 1e3)
    if jit:
        t5 = time.perf_counter()
        row["jit_s"] = silero_jit_seconds(y)
        row["ms_jit"] = (time.perf_counter() - t5) * 1e3
    return row


# -- inputs ---------------------------------------------------------------------------------
def _level(y: np.ndarray, rms_dbfs: float) -> np.ndarray:
    return (y * 10 ** (rms_dbfs / 20) / max(float(np.sqrt(np.mean(y**2))), 1e-12)).astype(np.float32)


def _coloured(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    spec = scipy.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.arange(len(spec)), 1)
    spec *= {"white": 1, "pink": f**-0.5, "brown": f**-1.0}[kind]
    return scipy.fft.irfft(spec, n)


def _harmonic(f0: float, t: np.ndarray, n: int = 6) -> np.ndarray:
    return sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, n + 1))


def generated(folder: Path, seconds: float = 3.0, seeds: int = 3) -> list[tuple[str, str, Path]]:
    """(kind, expected, path): WAV files of non-voice audio and of speech that must be kept."""
    n, out = int(seconds * SR), []
    t = np.arange(n) / SR

    def put(kind: str, expected: str, name: str, y: np.ndarray) -> None:
        path = folder / f"{name}.wav"
        sf.write(path, np.clip(y, -1, 1).astype(np.float32), SR, subtype="PCM_16")
        out.append((kind, expected, path))

    for s in range(seeds):
        rng = np.random.default_rng(s)
        for colour in ("white", "pink", "brown"):
            for db in (-60, -30, -6):
                put(f"{colour} noise", "reject", f"{colour}_{-db}dB_{s}", _level(_coloured(colour, n, rng), db))
        for subtype, width in (("PCM_16", 2), ("PCM_24", 3), ("PCM_U8", 1)):
            path = folder / f"random_{subtype}_{s}.wav"
            sf.write(path, np.zeros(n, np.float32), SR, subtype=subtype)
            raw = path.read_bytes()
            path.write_bytes(raw[: len(raw) - n * width] + rng.bytes(n * width))  # header kept, data random
            out.append(("random bytes after a WAV header", "reject", path))
        for hz in (50, 60):
            put("mains hum (with harmonics)", "reject", f"hum{hz}_{s}", _level(_harmonic(hz, t) + 0.01 * rng.standard_normal(n), -20))
        for hz in (200, 1000):
            put("steady tone", "reject", f"tone{hz}_{s}", _level(np.sin(2 * np.pi * hz * t + rng.uniform(0, 6)), -20))
        put("sweep 100 Hz–4 kHz", "reject", f"sweep_{s}", _level(np.sin(2 * np.pi * 100 * seconds / np.log(40) * (40 ** (t / seconds) - 1)), -20))
        chords = np.zeros(n)
        for i, start in enumerate(range(0, n, SR // 2)):  # a chord every 0.5 s, piano-like decay
            root = 110 * 2 ** (rng.integers(0, 24) / 12)
            seg = t[: min(SR // 2, n - start)]
            chords[start : start + len(seg)] = sum(_harmonic(root * r, seg, 8) for r in (1, 2 ** (4 / 12), 2 ** (7 / 12))) * np.exp(-4 * seg)
        put("music-like chords", "reject", f"chords_{s}", _level(chords, -20))
        clicks = np.zeros(n)
        clicks[rng.integers(0, n, 12)] = 1.0
        put("clicks", "reject", f"clicks_{s}", _level(clicks, -30))
        tick = np.zeros(n)
        tick[:: SR // 4] = 1.0
        put("clicks", "reject", f"metronome_{s}", _level(tick, -30))
        dither = (rng.uniform(-1, 1, n) + rng.uniform(-1, 1, n)) / 32768
        put("silence with dither", "reject", f"dither_{s}", dither)
        put("silence with dither", "reject", f"hiss60_{s}", _level(rng.standard_normal(n), -60))
        for gender in ("female", "male"):
            speech = synth.synth_recording(gender, np.random.default_rng(100 + s), duration_s=seconds).astype(np.float64)
            put("synthetic speech, quiet (-45 dBFS)", "keep", f"quiet_{gender}_{s}", _level(speech, -45))
            for snr in (10, 5, 0):
                noise = _level(_coloured("white" if s % 2 else "pink", n, rng), -20 - snr)
                put(f"synthetic speech + noise, SNR {snr} dB", "keep", f"snr{snr}_{gender}_{s}", _level(speech, -20) + noise)
    return out


def real_mixtures(folder: Path, files: pd.DataFrame, per_corpus: int = 6) -> list[tuple[str, str, Path]]:
    """Real speech of each corpus mixed with white/pink noise at 5 and 0 dB SNR, and made quiet."""
    out, rng = [], np.random.default_rng(7)
    for name, group in files.groupby("corpus"):
        for i, path in enumerate(group.sample(min(per_corpus, len(group)), random_state=0)["abspath"]):
            y = audio.load(path, FeatureConfig()).samples.astype(np.float64)
            for snr in (5, 0):
                noise = _level(_coloured("white" if i % 2 else "pink", len(y), rng), -20 - snr)
                p = folder / f"real_{name}_{i}_snr{snr}.wav"
                sf.write(p, np.clip(_level(y, -20) + noise, -1, 1), SR, subtype="PCM_16")
                out.append((f"real speech + noise, SNR {snr} dB", "keep", p))
            p = folder / f"real_{name}_{i}_quiet.wav"
            sf.write(p, _level(y, -50), SR, subtype="PCM_16")
            out.append(("real speech, quiet (-50 dBFS)", "keep", p))
    return out


# -- report -------------------------------------------------------------------------------------
def verdicts(df: pd.DataFrame, min_s: float) -> pd.DataFrame:
    """Per candidate, True where the file is judged speech."""
    v = pd.DataFrame({"energy": df["energy"], "voicing": df["energy"] & (df["voicing_s"] >= min_s),
                      "silero": df["energy"] & (df["silero_s"] >= min_s)})
    if "jit_s" in df:
        v["silero-jit"] = np.where(df["jit_s"].isna(), np.nan, df["energy"] & (df["jit_s"] >= min_s))
    return v


def report(corpus: pd.DataFrame, synthetic: pd.DataFrame, min_s: float) -> str:
    lines = []
    cands = ["energy", "voicing", "silero"]
    lines.append(f"**Files of the shared corpora judged not speech** (every file; verdict: at least {min_s} s of speech):\n")
    lines.append("| corpus | files | " + " | ".join(cands) + " | silero-jit (sample) |")
    lines.append("|---|---|" + "---|" * (len(cands) + 1))
    if len(corpus):
        for name, g in corpus.groupby("corpus"):
            v = verdicts(g, min_s)
            jit = v["silero-jit"].dropna() if "silero-jit" in v else pd.Series(dtype=float)
            lines.append(f"| {name} | {len(g)} | " + " | ".join(str(int((~v[c]).sum())) for c in cands)
                         + f" | {int((jit == 0).sum())} of {len(jit)} |")
    lines.append("")
    lines.append(f"**Generated inputs**: share judged speech (verdict: at least {min_s} s; 3 s each; `reject` rows should be 0 %, `keep` rows 100 %):\n")
    lines.append("| input | expected | n | " + " | ".join(cands) + " | silero-jit |")
    lines.append("|---|---|---|" + "---|" * (len(cands) + 1))
    v = verdicts(synthetic, min_s)
    for (kind, expected), g in synthetic.groupby(["kind", "expected"], sort=False):
        vv = v.loc[g.index]
        cells = [f"{100 * vv[c].mean():.0f} %" for c in cands + (["silero-jit"] if "silero-jit" in vv else [])]
        lines.append(f"| {kind} | {expected} | {len(g)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost(corpus: pd.DataFrame) -> str:
    lines = ["| corpus | mean s/file | extract (today's featurize work after decode), ms | energy rule, ms | voicing, ms | silero, whole file, ms "
             f"| silero, stops at {CHOSEN_S} s of speech, ms | silero-jit, ms (sample) |", "|---|---|---|---|---|---|---|---|"]
    for name, g in corpus.groupby("corpus"):
        jit = g["ms_jit"].dropna().median() if "ms_jit" in g else float("nan")
        lines.append(f"| {name} | {g['duration_s'].mean():.1f} | {g['ms_extract'].median():.2f} | {g['ms_energy'].median():.2f} | "
                     f"{g['ms_voicing'].median():.2f} | {g['ms_silero'].median():.2f} | {g['ms_silero_stop'].median():.2f} | {jit:.1f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=0, help="files per corpus (0: every file)")
    p.add_argument("--jit-sample", type=int, default=40, help="files per corpus also run through the TorchScript model")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results.md")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "voiceclf-bench-vad.parquet")
    return p.parse_args(argv)


def corpus_files(limit: int = 0) -> tuple[pd.DataFrame, bool]:
    """The WAV and FLAC files of the shared corpora (``limit`` per corpus, 0 every one), and whether the corpora are there."""
    from bench import corpora

    have_data = not corpora.missing()
    if not have_data:
        print(f"bench.vad: {corpora.DATA_ROOT} is absent: the shared corpora are skipped, generated inputs only")
    files = pd.concat([corpora.files_of(c) for c in corpora.CORPORA]) if have_data else pd.DataFrame(columns=["abspath", "corpus"])
    files = files[files["abspath"].str.lower().str.endswith((".wav", ".flac"))]
    if limit:
        files = files.groupby("corpus").head(limit)
    return files, have_data


def measure_corpus(files: pd.DataFrame, cfg: FeatureConfig, cache: Path, limit: int = 0, jit_sample: int = 40) -> pd.DataFrame:
    """Every candidate on every corpus file (``jit_sample`` per corpus through the TorchScript model too); a whole run's
    measurements are cached in ``cache`` and read back by the next whole run."""
    from bench import corpora

    if len(files) and cache.exists() and not limit:
        print(f"bench.vad: corpus measurements from {cache}")
        return pd.read_parquet(cache)
    rows = []
    jit_pick = set(files.groupby("corpus").sample(frac=1, random_state=0).groupby("corpus").head(jit_sample)["abspath"])
    for i, (path, name) in enumerate(zip(files["abspath"], files["corpus"])):
        y = audio.load(path, cfg).samples
        rows.append(dict(corpus=name, path=os.path.relpath(path, corpora.DATA_ROOT), **measure(y, cfg, path in jit_pick)))
        if i % 500 == 0:
            print(f"bench.vad: {i}/{len(files)} files", flush=True)
    corpus = pd.DataFrame(rows)
    if len(corpus) and not limit:
        corpus.to_parquet(cache)
    return corpus


def measure_generated(files: pd.DataFrame, cfg: FeatureConfig, have_data: bool) -> pd.DataFrame:
    """Every candidate on the generated inputs (and real speech in noise when the corpora are there), decoded by the real
    decoder; an input the decoder refuses is a row judged not speech, with its error code."""
    with tempfile.TemporaryDirectory() as tmp:
        made = generated(Path(tmp)) + (real_mixtures(Path(tmp), files) if have_data else [])
        synthetic = []
        for kind, expected, path in made:
            try:
                y = audio.load(path, cfg).samples
            except audio.AudioError as e:
                synthetic.append(dict(kind=kind, expected=expected, name=path.name, energy=False, voicing_s=0.0, silero_s=0.0, jit_s=0.0, error=e.code,
                                       **{f"silero_s_{q}": 0.0 for q in P_SPEECH}))
                continue
            synthetic.append(dict(kind=kind, expected=expected, name=path.name, **measure(y, cfg, True)))
        return pd.DataFrame(synthetic)


def sweep(corpus: pd.DataFrame, synthetic: pd.DataFrame) -> list[str]:
    """The threshold sweep: per verdict threshold and candidate, corpus files rejected, non-voice accepted, speech rejected."""
    lines = ["**Threshold sweep** (files; corpus = every file of the three corpora, non-voice = generated `reject` inputs, "
             "speech = generated `keep` inputs):\n",
             "| at least … s of speech | candidate | corpus files rejected | non-voice accepted | speech rejected |\n|---|---|---|---|---|"]
    keep, rej = synthetic["expected"] == "keep", synthetic["expected"] == "reject"
    for min_s in MIN_SPEECH_S:
        for c, col in [("voicing", "voicing_s")] + [(f"silero, chunks p ≥ {q}", f"silero_s_{q}") for q in P_SPEECH]:
            vc = corpus["energy"] & (corpus[col] >= min_s) if len(corpus) else pd.Series(dtype=bool)
            vs = synthetic["energy"] & (synthetic[col].fillna(0) >= min_s)
            lines.append(f"| {min_s} | {c} | {int((~vc).sum())} of {len(corpus)} | {int(vs[rej].sum())} of {int(rej.sum())} | {int((~vs[keep]).sum())} of {int(keep.sum())} |")
    return lines


def markdown(corpus: pd.DataFrame, synthetic: pd.DataFrame) -> str:
    """The results section: verdicts at the chosen threshold, the sweep, the cost per file, the closest calls."""
    sections = ["## Speech detection (issue 13.11): `bench/vad.py`\n",
                f"Written by `.venv/bin/python -m bench.vad` ({time.strftime('%Y-%m-%d')}; {len(corpus)} corpus files, "
                f"{len(synthetic)} generated; one thread). A candidate judges a file speech when the energy rule finds a voiced "
                "region and the candidate finds at least the given seconds of speech in the cleaned recording; silero counts "
                f"32-ms chunks with p(speech) ≥ {CHOSEN_P} (`FeatureConfig.vad_threshold`).\n"]
    sections.append(report(corpus, synthetic, CHOSEN_S) + "\n")
    sections += sweep(corpus, synthetic)
    sections.append("")
    if len(corpus):
        sections.append("**Cost per file**, in-process, one thread, median over every file (decode not included):\n")
        sections.append(cost(corpus) + "\n")
        for c, col in (("voicing", "voicing_s"), ("silero", "silero_s")):
            worst = corpus[corpus["energy"]].nsmallest(8, col)
            sections.append(f"Lowest {c} seconds among the corpus files: " + ", ".join(f"`{r.path}` {getattr(r, col):.2f} s" for r in worst.itertuples()) + "\n")
    for c, col in (("voicing", "voicing_s"), ("silero", "silero_s")):
        ok = synthetic[synthetic["expected"] == "reject"]
        worst = ok.nlargest(5, col)
        sections.append(f"Most {c} seconds among the generated non-voice inputs: " + ", ".join(f"`{r.name}` {getattr(r, col):.2f} s" for r in worst.itertuples()) + "\n")
    return "\n".join(sections)


def write_section(out: Path, text: str) -> None:
    """Put ``text`` between the markers in ``out``, replacing what they held, or append it with them."""
    old = out.read_text() if out.exists() else ""
    block = f"{BEGIN}\n{text}\n{END}\n"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END) + 1 :]
    else:
        new = old.rstrip("\n") + "\n\n" + block
    out.write_text(new)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)  # one thread, like each featurize worker
    threadpool_limits(1)
    cfg = FeatureConfig()
    files, have_data = corpus_files(args.limit)
    corpus = measure_corpus(files, cfg, args.cache, args.limit, args.jit_sample)
    synthetic = measure_generated(files, cfg, have_data)
    text = markdown(corpus, synthetic)
    print(text)
    write_section(args.out, text)
    print(f"bench.vad: section written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
