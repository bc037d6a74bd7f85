"""Benchmark voiceclf on the shared reference data: leave-one-corpus-out accuracy and speed.

    python -m bench.run [--quick] [--sections accuracy,flow,speed,conversations] [--device auto|cpu|cuda] [--out bench/results.md] [--workdir bench/work]

Accuracy (bench/loco.py) trains on two corpora and tests on the third, for each model family and a pitch
baseline; flow (bench/flow.py) times the README's `make features` + `make train` from nothing with the defaults; speed (bench/speed.py) times featurize and score against baselines timed in the same run;
conversations (bench/conversations.py) scores stitched two-speaker conversations and a one-hour broadcast of
held-out speakers: turns and seconds per sex against the old per-window output.
Both are written to ``--out`` as Markdown (bench/report.py). Scratch (features, the F0 cache, logs,
temporary MLflow stores) goes to ``--workdir``; the data is read in place and never copied.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from bench import conversations, corpora, flow, loco, report, speed
from bench.procs import BenchError, CpuMonitor, Runner, log, shown, shutdown_workers
from voiceclf import parallel, safeio, shards
from voiceclf.config import LABELS, REPO_ROOT

SECTIONS = ("accuracy", "flow", "speed", "conversations")
DEVICES = ("auto", "cpu", "cuda")
FEATURE_SETS = ("mfcc_pitch", "speaker_embedding")
QUICK_EPOCHS = loco.QUICK_EPOCHS


def featurize_corpora(runner: Runner, sources: list[Path], out_root: Path) -> dict[str, dict]:
    """Every corpus into one shard folder per feature set, in this process through the pipeline, with the
    featurize job's defaults (``pipeline.VARIANTS`` augmented variants of each labelled file).

    Incremental: a rerun only featurizes what is new. Shards made with other defaults or sources, or that
    this voiceclf cannot read (schema or config changed), are made afresh, once."""
    from voiceclf import pipeline

    made_with = {"variants": pipeline.VARIANTS, "sources": [str(s) for s in sources]}
    out: dict[str, dict] = {}
    for fs in FEATURE_SETS:
        d = out_root / fs
        marker = d / ".bench.json"
        if d.exists() and (not marker.exists() or json.loads(marker.read_text()) != made_with):
            log(f"{shown(d)} was made from other sources or featurize defaults; featurizing afresh")
            shutil.rmtree(d)
        runner.commands.append(f"# in-process: voiceclf.pipeline.featurize_dir({[shown(s) for s in sources]!r}, {shown(d)!r}, "
                               f"[{fs!r}], variants={pipeline.VARIANTS}, allow_outside_paths=True)")
        for attempt in (1, 2):
            log(f"featurize {fs}: {len(sources)} corpora → {shown(d)} (incremental)")
            t0 = time.perf_counter()
            try:
                # allow_outside_paths: the --quick manifests list files of ../shared/data
                (summ,) = pipeline.featurize_dir(sources, d, [fs], variants=pipeline.VARIANTS, allow_outside_paths=True)
                shards.read(d, with_features=False)
                break
            except Exception as e:
                if attempt == 2:
                    raise BenchError(f"{d}: cannot featurize or read back the features: {e}") from None
                log(f"{shown(d)} cannot be reused ({type(e).__name__}: {str(e).splitlines()[0][:160]}); featurizing afresh")
                shutil.rmtree(d, ignore_errors=True)
        marker.write_text(json.dumps(made_with))
        out[fs] = {"dir": d, "wall_s": time.perf_counter() - t0, "new_files": summ.todo, "rate_job": summ.files_per_s,
                   "errors": shards.read_errors(d)}
    out["variants"] = made_with["variants"]
    return out


def data_stats(data: dict) -> pd.DataFrame:
    """Per corpus: recordings, speakers by sex, real and augmented windows of each feature set."""
    rows = {}
    for fs, d in data.items():
        df = pd.DataFrame({"corpus": d.corpus, "speaker": d.speaker, "file": d.file, "y": d.y, "variant": d.variant})
        for c, g in df.groupby("corpus"):
            spk = g.drop_duplicates("speaker")
            r = rows.setdefault(c, {"corpus": c, "files": g.loc[g["variant"] == 0, "file"].nunique(),
                                    **{f"{lab}_speakers": int((spk["y"] == i).sum()) for i, lab in enumerate(LABELS)}})
            r[f"windows.{fs}"] = int((g["variant"] == 0).sum())
            r[f"augmented.{fs}"] = int((g["variant"] > 0).sum())
    return pd.DataFrame(list(rows.values())).sort_values("corpus", ignore_index=True)


def run_flow(runner: Runner, workdir: Path, quick: bool, n_jobs: int, device: str) -> dict:
    """The README's flow timed from nothing (bench/flow.py) on the shared corpora (--quick: their subsets)."""
    from voiceclf import pipeline

    srcs = list((corpora.quick_sources(workdir) if quick else corpora.sources()).values())
    scratch = workdir / ("flow-quick" if quick else "flow")
    runner.commands.append(f"# in-process: voiceclf.pipeline.featurize_dir({[shown(s) for s in srcs]!r}, {shown(scratch / 'features')!r}, "
                           f"{list(FEATURE_SETS)!r}, variants={pipeline.VARIANTS}, allow_outside_paths=True)  # fresh folder")
    runner.commands.append(f"# in-process: voiceclf.pipeline.train_grid([{shown(scratch / 'features')!r}], pipeline.read_grid(jobs.train.DEFAULT_GRID), "
                           f"tracking_uri='sqlite:///<temporary>', device={device!r})")
    out = flow.run(srcs, scratch, jobs=n_jobs, device=device, log=log)
    shutdown_workers()
    return out


def run_accuracy(runner: Runner, workdir: Path, quick: bool, n_jobs: int, device: str = "cpu") -> dict:
    srcs = corpora.quick_sources(workdir) if quick else corpora.sources()
    fz = featurize_corpora(runner, list(srcs.values()), workdir / ("features-quick" if quick else "features"))
    t0 = time.perf_counter()
    data = loco.load({fs: fz[fs]["dir"] for fs in FEATURE_SETS})
    load_s = time.perf_counter() - t0
    grids = loco.read(epochs=QUICK_EPOCHS if quick else None)
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        log(msg)

    t0 = time.perf_counter()
    folds = loco.run(data, grids, n_jobs=n_jobs, device=device, log=note)
    points = folds[0].outcome.plan.points  # every fold expands the same grid
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pitch = loco.pitch_table(data["mfcc_pitch"], workdir / "pitch" / "f0.parquet", n_jobs=n_jobs, log=note)
    pitch_s = time.perf_counter() - t0
    table = pd.concat([loco.summary(folds), pd.DataFrame(loco.pitch_rows(pitch))], ignore_index=True)
    t0 = time.perf_counter()
    hard_rows = hard_view(data, folds, workdir / "voice" / "measures.parquet", n_jobs=n_jobs, log=note)
    hard_s = time.perf_counter() - t0
    shutdown_workers()
    return {"featurize": fz, "stats": data_stats(data), "points": points, "folds": folds, "table": table.sort_values("held_out", kind="stable", ignore_index=True),
            "pitch": pitch, "load_s": load_s, "train_s": train_s, "pitch_s": pitch_s, "notes": notes, "n_jobs": n_jobs,
            "hard": hard_rows, "hard_s": hard_s}


def hard_view(data: dict, folds: list, cache: Path, n_jobs: int, log=print) -> list[dict]:
    """The hard-voice view (bench/hard.py) of each fold's champion and family picks: per-recording voice
    measures (F0, duration) cached in ``cache``, then the calibrated held-out predictions split by them."""
    from bench import hard, voicefeat

    d = next(iter(data.values()))
    files = pd.DataFrame({"file": d.file, "speaker": d.speaker})[d.variant == 0].drop_duplicates("file")
    measures = voicefeat.table(files[["file"]], cache, n_jobs=n_jobs, log=log).merge(files, on="file")
    rows = []
    for f in folds:
        for fam in (None, *loco.FAMILIES):
            res = loco.chosen(f, fam)
            if res is not None and res.test_files is not None:
                method = f"champion ({res.point.family})" if fam is None else fam
                rows.append({"held_out": f.corpus, "method": method, **hard.view(hard.annotate(res.test_files, measures))})
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description="Benchmark voiceclf on ../shared/data: leave-one-corpus-out accuracy and speed.")
    p.add_argument("--quick", action="store_true", help=f"smoke run of a few minutes: {QUICK_EPOCHS} epochs, a few speakers per corpus, "
                   "no repeats; writes WORKDIR/results-quick.md unless --out is given")
    p.add_argument("--out", type=Path, help="results Markdown (default bench/results.md)")
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench" / "work", help="scratch: features, caches, logs (default %(default)s)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    p.add_argument("--jobs", type=int, default=-1, help="parallel processes for training and pyin (-1 = all cores)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where the benchmark trains and scores: auto = CUDA when torch sees "
                   "a GPU, else the CPU (default %(default)s); cuda on a GPU machine reports the same figures on the GPU")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad or not args.sections:
        p.error(f"--sections: expected a subset of {','.join(SECTIONS)}, got {bad or 'nothing'}")
    args.workdir = args.workdir.resolve()
    args.out = (args.out or (args.workdir / "results-quick.md" if args.quick else REPO_ROOT / "bench" / "results.md")).resolve()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from voiceclf.config import DeviceError

    try:  # jobs the library refuses, cuda without CUDA: one line, before any work
        from voiceclf.model import pick_device

        parallel.check(args.jobs)
        device = str(pick_device(args.device))
    except (parallel.EngineError, DeviceError) as e:
        print(f"bench: error: --{e}", file=sys.stderr)  # "--jobs must be ...", "--device cuda: torch sees no CUDA device ..."
        return 2
    if not corpora.DATA_ROOT.is_dir():
        print(f"bench: reference data not found at {corpora.DATA_ROOT}; nothing to benchmark (skipped).")
        return 0
    if corpora.missing():
        print(f"bench: error: missing from the reference data: {', '.join(map(str, corpora.missing()))}", file=sys.stderr)
        return 1
    started = datetime.datetime.now().astimezone()
    t_start = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    n_jobs = (os.cpu_count() or 1) if args.jobs == -1 else args.jobs
    runner = Runner(args.workdir)
    wall: dict[str, float] = {}
    cpu: dict[str, dict | None] = {}
    acc = spd = conv = flw = None
    with CpuMonitor() as mon:
        def timed(name, fn):
            t0, w0 = time.perf_counter(), time.time()
            out = fn()
            wall[name] = time.perf_counter() - t0
            cpu[name] = mon.summary(w0, time.time())
            return out
        try:
            if "accuracy" in args.sections:
                acc = timed("accuracy", lambda: run_accuracy(runner, args.workdir, args.quick, n_jobs, device))
            if "flow" in args.sections:
                flw = timed("flow", lambda: run_flow(runner, args.workdir, args.quick, n_jobs, device))
            if "speed" in args.sections:
                spd = timed("speed", lambda: speed.run(runner, args.workdir, args.quick, device=device))
            if "conversations" in args.sections:  # its champion trains on the accuracy section's features
                conv = timed("conversations", lambda: conversations.run(
                    runner, args.workdir, features=args.workdir / ("features-quick" if args.quick else "features") / "speaker_embedding",
                    n=12 if args.quick else 60, hour_min=5 if args.quick else 60, device=device))
        except BenchError as e:
            print(f"bench: error: {e}", file=sys.stderr)
            return 1
    wall = {"total": time.perf_counter() - t_start, **wall}
    text, missed = report.render(args, acc, spd, runner, started, wall, cpu, flw)
    if conv:
        text += "\n" + conversations.markdown(conv)
    safeio.write_text(args.out, text)
    log(f"wrote {shown(args.out)} after {wall['total'] / 60:.1f} min; targets missed: {len(missed)}")
    for m in missed:
        log(f"  missed: {m}")
    return 0


if __name__ == "__main__":
    # Run through the package module so joblib workers can import the worker functions by name.
    from bench.run import main as _main

    sys.exit(_main())
