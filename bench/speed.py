"""Speed: featurize and score files/s, each beside a baseline timed in the same run.

Every measurement is a whole command in a fresh process, as a user runs it (``jobs.featurize``,
``jobs.score``, ``bench.plain_loop``), on the same files as its baseline. Rounds of all of them are
repeated and interleaved, so a busy spell on a shared machine hits a measurement and its baseline
alike; each keeps its fastest run (other load only ever slows a run down). Counts come from the
jobs' output files; a job's own files/s (its parallel loop, without interpreter start-up and
imports) only exists in its summary line.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from bench import corpora, longfile
from bench.procs import Runner, log, parse_summary, shown
from voiceclf import shards, synth

FEATURE_SETS = ("mfcc_pitch", "speaker_embedding")
#: The plain loop runs BLAS/OpenMP on one thread, like each featurize worker: on a busy machine spinning BLAS
#: threads would slow the baseline down several-fold and make the ratios meaningless.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CHAMPION_EPOCHS = 1
SYNTH = {"speakers": 8, "clips": 10, "seed": 0}


def fresh(d: Path) -> Path:
    shutil.rmtree(d, ignore_errors=True)
    return d


def featurize(runner: Runner, sources: list[Path], out: Path, fs: str, tag: str, poll: bool = False) -> dict:
    """One featurize call with ``--variants 0`` (the work score does per file) into a fresh folder."""
    res = runner.job("featurize", [*map(shown, sources), "--out", shown(fresh(out)), "--feature-set", fs, "--variants", "0",
                                       "--allow-outside-paths"],  # the subset manifests list files of ../shared/data
                     log_name=f"speed_{tag}", poll_memory=poll)
    rows, _, _ = shards.read(out, with_features=False)
    files = rows.drop_duplicates(["source", "path"]).shape[0] + len(shards.read_errors(out))
    fresh(out)
    return {**res, "text": None, "files": files, "windows": len(rows), "rate_job": float(parse_summary(res["text"], "featurize summary")["files/s"])}


def score(runner: Runner, dirs: list[Path], report: Path, env: dict, tag: str, device: str = "cpu") -> dict:
    res = runner.job("score", [*map(shown, dirs), "--out", shown(report), "--device", device], log_name=f"speed_{tag}", env=env)
    rep = pd.read_csv(report)
    summ = parse_summary(res["text"], "score summary")
    return {**res, "text": None, "files": len(rep), "status": rep["status"].value_counts().to_dict(), "rate_job": float(summ["files/s"]),
            "first_s": summ.get("first file scored after s", "-")}


def plain_loop(runner: Runner, sources: list[Path], npz: Path, tag: str) -> dict:
    res = runner.module("bench.plain_loop", [*map(shown, sources), "--out", shown(npz)], log_name=f"speed_{tag}", env=ONE_THREAD)
    npz.unlink(missing_ok=True)
    summ = parse_summary(res["text"], "plain loop")
    return {**res, "text": None, "files": int(summ["files"]), "windows": int(summ["windows"]), "rate_job": float(summ["files/s"])}


def champions(runner: Runner, sp: Path, feature_sets: tuple[str, ...] = FEATURE_SETS, device: str = "cpu") -> dict[str, dict]:
    """A throwaway champion per family, for score: synthetic voices → featurize → ``jobs.train`` (one point,
    one epoch) into its own temporary SQLite store, where it is registered as ``voiceclf@champion``."""
    syn = fresh(sp / "synth")
    synth.make_corpus(syn / "corpus", **SYNTH)
    runner.commands.append(f"# in-process: voiceclf.synth.make_corpus({shown(syn / 'corpus')!r}, " + ", ".join(f"{k}={v}" for k, v in SYNTH.items()) + ")")
    out = {}
    for fs in feature_sets:
        feat = syn / "features" / fs
        runner.job("featurize", [shown(syn / "corpus"), "--out", shown(feat), "--feature-set", fs, "--variants", "0"], log_name=f"champion_featurize_{fs}")
        store = fresh(sp / "mlruns" / fs)
        store.mkdir(parents=True)
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
        args = ["--features", shown(feat), "--lr", "1e-3", "--epochs", str(CHAMPION_EPOCHS), "--jobs", "1", "--device", device, *(["--hidden", "0"] if fs == "speaker_embedding" else [])]
        res = runner.job("train", args, log_name=f"champion_train_{fs}", env=env)
        out[fs] = {"env": env, "train_wall_s": res["wall_s"]}
    return out


def variant_cost(files: list[Path], variants: int = 2, n: int = 300) -> dict:
    """CPU per file, in this process on one thread, of a recording's own path (decode, speech gate, clean,
    windows, features) and of one augmented variant (degrade, clean, windows, features): what the job's
    workers do for each, without the parts both share (start-up, hashing, writing)."""
    import time

    from threadpoolctl import threadpool_limits

    from voiceclf import augment, file_windows
    from voiceclf.config import FeatureConfig

    cfg = FeatureConfig()
    step = max(1, len(files) // n)
    items = [file_windows.Item(path=str(f), source="", label="x", sha256="0" * 64) for f in files[::step][:n]]
    with threadpool_limits(1):
        for it in items[:5]:  # warm: first calls load plans and caches
            file_windows._featurize_one(it, cfg)
        t = time.process_time()
        samples = [y for _, y in (file_windows._featurize_one(it, cfg) for it in items) if y is not None]
        rec = time.process_time() - t
        t = time.process_time()
        for i, y in enumerate(samples):
            for v in augment.variants(y, cfg, variants, seed=i):
                file_windows.windows_of(v, cfg)
        var = time.process_time() - t
    rec_ms, var_ms = 1e3 * rec / len(items), 1e3 * var / len(samples) / variants
    log(f"variant cost: recording {rec_ms:.2f} ms/file, one variant {var_ms:.2f} ms ({len(items)} files, one thread)")
    return {"files": len(items), "variants": variants, "recording_ms": rec_ms, "variant_ms": var_ms}


def best(runs: list[dict]) -> dict:
    """The fastest run by the tool's own rate, with every run's rates, the lowest CPU time and the highest peak memory."""
    top = max(runs, key=lambda r: r["rate_job"])
    peaks = [r["peak_rss_tree"] for r in runs if r.get("peak_rss_tree")]
    ones = [r["peak_rss_one"] for r in runs if r.get("peak_rss_one")]
    return {**top, "all_job": [r["rate_job"] for r in runs], "all_e2e": [r["files"] / r["wall_s"] for r in runs],
            "rate_e2e": max(r["files"] / r["wall_s"] for r in runs), "cpu_ms": min(1e3 * r["cpu_s"] / r["files"] for r in runs),
            "peak_rss_tree": max(peaks) if peaks else None, "peak_rss_one": max(ones) if ones else None}


def run(runner: Runner, workdir: Path, quick: bool, device: str = "cpu") -> dict:
    """Every measurement above; the champions train and score on ``device`` (featurize and the plain loop are CPU work)."""
    sp = workdir / "speed"
    sp.mkdir(parents=True, exist_ok=True)
    reps = 1 if quick else 3
    short_fz, short_dirs = corpora.short_clip_set(workdir, quick)
    every = corpora.quick_sources(workdir) if quick else corpora.sources()
    tenth = corpora.every_nth(every, 10, sp / "tenth.csv")
    every = list(every.values())
    every_dirs = corpora.score_folders()

    log("champions for score: synthetic corpus → featurize → jobs.train (1 point, 1 epoch) per family")
    champs = champions(runner, sp, device=device)
    runs: dict[str, list[dict]] = {}

    def add(key: str, r: dict) -> None:
        runs.setdefault(key, []).append(r)

    for i in range(reps):
        log(f"speed round {i + 1}/{reps}: featurize and score the short clips, the plain loop; featurize and score every corpus, the plain loop")
        for fs in FEATURE_SETS:
            add(f"featurize.short.{fs}", featurize(runner, short_fz, sp / "featurize", fs, f"featurize_short_{fs}_{i}"))
            add(f"score.{fs}", score(runner, short_dirs, sp / f"report_{fs}.csv", champs[fs]["env"], f"score_{fs}_{i}", device))
        add("loop.short", plain_loop(runner, short_fz, sp / "plain_loop.npz", f"plain_loop_short_{i}"))
        for fs in FEATURE_SETS:
            add(f"featurize.all.{fs}", featurize(runner, every, sp / "featurize", fs, f"featurize_all_{fs}_{i}", poll=True))
            if not quick:  # score takes folders: --quick's subsets of every corpus are manifests
                add(f"score.all.{fs}", score(runner, every_dirs, sp / f"report_all_{fs}.csv", champs[fs]["env"], f"score_all_{fs}_{i}", device))
        add("loop.all", plain_loop(runner, every, sp / "plain_loop.npz", f"plain_loop_all_{i}"))
    variant = variant_cost(sorted(p for d in short_dirs for p in Path(d).rglob("*.wav")))
    log("featurize a tenth of every corpus, for memory")
    for fs in FEATURE_SETS:
        add(f"featurize.tenth.{fs}", featurize(runner, [tenth], sp / "featurize", fs, f"featurize_tenth_{fs}", poll=True))
    log("long files, for memory: featurize and score one synthetic file of 20 and 60 minutes, score one of 10 hours")
    long = longfile.run(runner, workdir, champs["mfcc_pitch"]["env"], minutes=(20, 60), score_hours=() if quick else (10,), device=device)
    return {"reps": reps, "quick": quick, "variant": variant, "short_sources": short_fz, "short_dirs": short_dirs, "sources": every, "tenth": tenth,
            "champions": champs, "long": long, **{k: best(v) for k, v in runs.items()}}
