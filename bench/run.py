"""Benchmark voiceclf on the shared reference data: speaker-disjoint accuracy and throughput.

    python -m bench.run [--quick] [--out bench/results.md] [--workdir bench/work] [--sections accuracy,speed]

Everything is measured with the project's own jobs and functions, against baselines timed in the
same run, and written to ``--out`` as Markdown. Intermediate files (features, F0 cache, logs, a
temporary MLflow store) go to ``--workdir``; the data is read in place and never copied.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import random
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from voiceclf.config import LABELS, REPO_ROOT

DATA = REPO_ROOT.parent / "shared" / "data" / "audiomnist_az"
SECTIONS = ("accuracy", "speed")
FEATURE_SETS = ("mfcc_deltas", "mfcc_pitch")
N_FOLDS = 5
PYIN_FMIN, PYIN_FMAX = 60.0, 400.0
TARGETS = {
    "clip_bacc": 0.95,  # mfcc_pitch clip-level balanced accuracy
    "speaker_acc": 0.98,  # mfcc_pitch speaker-level accuracy
    "featurize_vs_plain": 3.0,
    "score_vs_featurize": 0.7,
}


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def shown(path: Path | str) -> str:
    """A path as it appears in commands run from the repo root: relative when near the repo."""
    p = Path(os.path.abspath(path))
    for base in (REPO_ROOT, REPO_ROOT.parent):
        try:
            p.relative_to(base)
            return os.path.relpath(p, REPO_ROOT)
        except ValueError:
            continue
    return str(p)


def python_shown() -> str:
    return shown(sys.executable) if Path(sys.executable).is_relative_to(REPO_ROOT) else "python"


# ----------------------------------------------------------------------------- subprocess jobs
class Runner:
    """Runs ``python -m jobs.<name>`` from the repo root, logs to the workdir, records every command."""

    def __init__(self, workdir: Path) -> None:
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.commands: list[str] = []

    def job(self, name: str, args: list[str], **kw) -> dict:
        return self.module(f"jobs.{name}", args, **kw)

    def module(self, module: str, args: list[str], *, log_name: str, env: dict | None = None, poll_memory: bool = False) -> dict:
        cmd = [sys.executable, "-m", module, *args]
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        self.commands.append((prefix + " " if prefix else "") + shlex.join([python_shown(), "-m", module, *args]))
        full_env = {**os.environ, "CI": "1", **(env or {})}  # CI: plain log lines, no progress bars
        log_path = self.logs / f"{log_name}.log"
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(log_path, "w") as lf:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            peak_tree, peak_one = poll_rss(proc) if poll_memory else (None, None)
            rc = proc.wait()
            wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU seconds of the job and every descendant it reaped (its worker processes): robust to other load on the machine
        cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        text = log_path.read_text(errors="replace")
        if rc != 0:
            raise BenchError(f"{shlex.join(cmd)} exited {rc}; log {log_path}:\n{text[-3000:]}")
        return {"wall_s": wall, "cpu_s": cpu_s, "text": text, "peak_rss_tree": peak_tree, "peak_rss_one": peak_one, "log": str(log_path)}


def poll_rss(proc: subprocess.Popen, interval: float = 0.05) -> tuple[int | None, int | None]:
    """Peak RSS of a process tree while it runs: (sum over the tree, largest single process), bytes."""
    try:
        import psutil
    except ImportError:
        return None, None
    root = psutil.Process(proc.pid)
    peak_tree = peak_one = 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            peak_one = max(peak_one, rss)
        peak_tree = max(peak_tree, total)
        time.sleep(interval)
    return peak_tree, peak_one


def parse_summary(text: str, title: str) -> dict[str, str]:
    """The ``<title>: k=v, k=v`` log line a job writes at the end (last one wins)."""
    found = None
    for line in text.splitlines():
        i = line.find(f"{title}: ")
        if i >= 0 and "=" in line:
            found = line[i + len(title) + 2:]
    out = {}
    for part in (found or "").split(", "):
        k, sep, v = part.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def featurize_defaults() -> dict:
    """The featurize job's own defaults that change the work per file (``--augment`` appeared mid-project)."""
    from jobs import featurize

    ns = featurize.parse_args([str(DATA), "--out", "unused"])
    return {"augment": getattr(ns, "augment", None)}


def no_augment() -> list[str]:
    """Arguments that make featurize do only what score does: one featurization per file."""
    return ["--augment", "0"] if featurize_defaults()["augment"] is not None else []


# ----------------------------------------------------------------------------- shared preparation
class Prepared:
    """Features of both sets in the workdir, the file table and the speaker-disjoint folds."""

    def __init__(self, runner: Runner, workdir: Path) -> None:
        import pandas as pd

        from voiceclf import shards

        self.dirs = {fs: workdir / "features" / fs for fs in FEATURE_SETS}
        self.featurize = {}
        tables = {}
        self.defaults = featurize_defaults()
        for fs, out in self.dirs.items():
            marker = out / ".bench-featurize-defaults.json"
            if out.exists() and (not marker.exists() or json.loads(marker.read_text()) != self.defaults):
                log(f"{shown(out)} was made with other featurize defaults; featurizing afresh")
                shutil.rmtree(out, ignore_errors=True)
            for attempt in (1, 2):
                log(f"featurize {fs} → {shown(out)} (incremental)")
                try:
                    self.featurize[fs] = runner.job("featurize", [shown(DATA), "--out", shown(out), "--feature-set", fs], log_name=f"featurize_{fs}")
                    rows, _, _ = shards.read(out, with_features=False)
                    marker.write_text(json.dumps(self.defaults))
                    break
                except Exception as e:  # shards left by an older voiceclf (schema or config changed): make them again, once
                    if attempt == 2:
                        raise BenchError(f"{out}: cannot featurize or read back the features: {e}") from None
                    log(f"{shown(out)} cannot be reused ({type(e).__name__}: {str(e).splitlines()[0][:160]}); featurizing afresh")
                    shutil.rmtree(out, ignore_errors=True)
            self.windows = getattr(self, "windows", {})
            self.windows[fs] = int((rows["augment"] == 0).sum()) if "augment" in rows else len(rows)
            self.augmented = getattr(self, "augmented", {})
            self.augmented[fs] = int((rows["augment"] > 0).sum()) if "augment" in rows else 0
            rows = rows[rows["augment"] == 0] if "augment" in rows else rows
            # the same ids as voiceclf.train.Data.from_shards: "source/path" per file, "source/speaker" per speaker
            t = pd.DataFrame({"file": rows["source"] + "/" + rows["path"], "speaker": rows["source"] + "/" + rows["speaker"],
                              "y": rows["label"].map({lab: i for i, lab in enumerate(LABELS)}), "sha256": rows["sha256"],
                              "abspath": rows["source"] + "/" + rows["path"]})
            tables[fs] = t.drop_duplicates("file").sort_values("file", ignore_index=True)
        if set(tables["mfcc_pitch"]["file"]) != set(tables["mfcc_deltas"]["file"]):
            raise BenchError("the two feature sets hold different files; delete the workdir's features and rerun")
        self.files = tables["mfcc_pitch"]
        self.errors = shards.read_errors(self.dirs["mfcc_pitch"])
        self.folds = make_folds(self.files)


def make_folds(files) -> list[dict[str, list[str]]]:
    """Outer StratifiedGroupKFold(5) over clips grouped by speaker; val = one inner fold of 7 (~15 %) of the training speakers."""
    from sklearn.model_selection import StratifiedGroupKFold

    outer = StratifiedGroupKFold(n_splits=N_FOLDS, shuffle=True, random_state=0)
    folds = []
    for k, (tr_idx, te_idx) in enumerate(outer.split(files, files["y"], groups=files["speaker"])):
        trf = files.iloc[tr_idx].reset_index(drop=True)
        inner = StratifiedGroupKFold(n_splits=7, shuffle=True, random_state=k)
        _, va_idx = next(inner.split(trf, trf["y"], groups=trf["speaker"]))
        val = sorted(set(trf["speaker"].iloc[va_idx]))
        test = sorted(set(files["speaker"].iloc[te_idx]))
        train = sorted(set(trf["speaker"]) - set(val))
        split = {"train": train, "val": val, "test": test}
        gender = files.drop_duplicates("speaker").set_index("speaker")["y"]
        for name, spk in split.items():
            if gender[spk].nunique() < 2:
                raise BenchError(f"fold {k}: the {name} split holds one gender only")
        folds.append(split)
    return folds


# ----------------------------------------------------------------------------- training (worker side)
@functools.lru_cache(maxsize=2)
def _load_data(features_dir: str):
    from voiceclf import shards
    from voiceclf import train as tr

    rows, x, cfg = shards.read(features_dir)
    return tr.Data.from_shards(rows, x, cfg)


def train_fold(features_dir: str, point: dict, split: dict, threads: int) -> dict:
    """One fold with the project's own train_point; returns plain values (no weights)."""
    from threadpoolctl import threadpool_limits

    from voiceclf import train as tr

    data = _load_data(features_dir)
    gp = tr.GridPoint(**point)
    with threadpool_limits(limits=threads):
        res = tr.train_point(gp, data, split, seed=0, threads=threads)
    return {
        "error": res.error, "seconds": res.seconds, "epochs": gp.epochs,
        "train_windows": int(np.isin(data.speaker, split["train"]).sum()),
        "test": res.test, "final": res.final,
        "per_speaker": res.per_speaker[["speaker", "acc"]].to_dict("records") if res.per_speaker is not None else [],
    }


# ----------------------------------------------------------------------------- accuracy
def grid_points(quick: bool) -> list[dict]:
    """The default grid of jobs/grid.toml (lr 1e-3 first, then 3e-4); --quick: the first point, 2 epochs."""
    import tomllib

    from voiceclf import train as tr

    g = tomllib.loads((REPO_ROOT / "jobs" / "grid.toml").read_text())
    points = tr.grid(g["lr"], g["epochs"], g["gamma"], g["batch_size"], ["mfcc_pitch"], bool(g.get("augment", True)))
    points = [asdict(p) for p in points]
    if quick:
        points = [{**points[0], "epochs": 2}]
    return points


def point_name(p: dict) -> str:
    return f"lr {p['lr']:g}, {p['epochs']} epochs, StepLR step {p['step_size']} gamma {p['gamma']:g}, batch {p['batch_size']}, augment {'on' if p['augment'] else 'off'}"


PITCH_VARIANTS = {
    # name: (extra zero-phase high-pass in Hz before pyin, or None; description)
    "f0": (None, "waveform of `voiceclf.audio.load`"),
    "f0_hp80": (80.0, "same waveform + a further 80 Hz high-pass (diagnostic)"),
}


def f0_of_files(items: list[tuple[str, str]]) -> list[dict]:
    """Worker: median pyin F0 (Hz) over the voiced frames of each (sha256, path), per pitch variant."""
    import librosa
    import scipy.signal
    from threadpoolctl import threadpool_limits

    from voiceclf import audio

    out = []
    with threadpool_limits(limits=1):
        for sha, path in items:
            y = audio.load(path).samples
            row = {"sha256": sha}
            for name, (hp, _) in PITCH_VARIANTS.items():
                yy = y if hp is None else scipy.signal.sosfiltfilt(scipy.signal.butter(4, hp, btype="highpass", fs=16000, output="sos"), y)
                f0, voiced, _ = librosa.pyin(yy, fmin=PYIN_FMIN, fmax=PYIN_FMAX, sr=16000)
                row[name] = float(np.median(f0[voiced])) if voiced.any() else float("nan")
            out.append(row)
    return out


def pitch_cache(files, workdir: Path, n_jobs: int) -> tuple:
    """F0 per clip and variant (DataFrame indexed by sha256), computed once in parallel, kept in workdir/pitch/f0.parquet."""
    import pandas as pd
    from joblib import Parallel, delayed

    cache = workdir / "pitch" / "f0.parquet"
    timing_path = cache.with_name("f0_timing.json")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cols = ["sha256", *PITCH_VARIANTS]
    have = pd.read_parquet(cache) if cache.exists() else pd.DataFrame(columns=cols)
    if list(have.columns) != cols:  # made by another version of this script: start again
        have = pd.DataFrame(columns=cols)
    todo = files[~files["sha256"].isin(set(have["sha256"]))].drop_duplicates("sha256")
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    if len(todo):
        log(f"pyin F0 of {len(todo)} clips ({len(PITCH_VARIANTS)} variants) on {n_jobs} processes")
        items = list(zip(todo["sha256"], todo["abspath"]))
        size = max(1, min(16, len(items) // (n_jobs * 4)))
        t0 = time.perf_counter()
        parts = Parallel(n_jobs=n_jobs)(delayed(f0_of_files)(items[i : i + size]) for i in range(0, len(items), size))
        seconds = time.perf_counter() - t0
        new = pd.DataFrame([r for part in parts for r in part], columns=cols)
        have = pd.concat([have, new], ignore_index=True) if len(have) else new
        tmp = cache.with_suffix(".tmp")
        have.to_parquet(tmp, index=False)
        os.replace(tmp, cache)
        timing = {"files": len(todo), "seconds": seconds, "n_jobs": n_jobs, "variants": len(PITCH_VARIANTS),
                  "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cached": False}
        timing_path.write_text(json.dumps(timing))
    else:
        timing = {**timing, "cached": True}
    return have.set_index("sha256").astype(float), timing


def fit_threshold(f0: np.ndarray, y: np.ndarray) -> float:
    """The F0 threshold (Hz) maximising balanced accuracy of "male when F0 < threshold"; no F0 counts as 0 Hz."""
    f = np.nan_to_num(f0, nan=0.0)
    u = np.unique(f)
    cand = np.concatenate([[u[0] - 1], (u[1:] + u[:-1]) / 2, [u[-1] + 1]])
    pred = f[None, :] < cand[:, None]
    tpr = (pred & (y == 1)).sum(1) / max(int((y == 1).sum()), 1)
    tnr = (~pred & (y == 0)).sum(1) / max(int((y == 0).sum()), 1)
    return float(cand[np.argmax((tpr + tnr) / 2)])


def clip_and_speaker_metrics(y: np.ndarray, pred: np.ndarray, speaker: np.ndarray) -> dict:
    import pandas as pd
    from sklearn.metrics import balanced_accuracy_score

    correct = pd.Series(pred == y).groupby(speaker).mean()
    return {"test_balanced_acc": float(balanced_accuracy_score(y, pred)), "test_speaker_acc": float((correct > 0.5).mean())}


def run_accuracy(prep: Prepared, workdir: Path, quick: bool, n_jobs: int) -> dict:
    from joblib import Parallel, delayed

    folds = prep.folds[:2] if quick else prep.folds
    points = grid_points(quick)
    results: dict = {}
    train_wall = 0.0

    def train(tasks: list[tuple[str, int, int]]) -> None:
        nonlocal train_wall
        names = ", ".join(sorted({f"{fs} lr {points[pi]['lr']:g}" for fs, pi, _ in tasks}))
        log(f"train {len(tasks)} fold models ({names}) on {n_jobs} processes × 1 torch thread")
        t0 = time.perf_counter()
        outs = Parallel(n_jobs=n_jobs)(
            delayed(train_fold)(str(prep.dirs[fs]), {**points[pi], "feature_set": fs}, folds[k], 1) for fs, pi, k in tasks
        )
        train_wall += time.perf_counter() - t0
        failed = [(t, o["error"]) for t, o in zip(tasks, outs) if o["error"]]
        if failed:
            raise BenchError(f"{len(failed)} fold model(s) failed to train; first: {failed[0][0]}\n{failed[0][1]}")
        results.update(zip(tasks, outs))

    # both feature sets at the grid's first point; the other grid points on mfcc_pitch (the set with targets) to choose on
    train([(fs, 0, k) for k in range(len(folds)) for fs in FEATURE_SETS] + [("mfcc_pitch", pi, k) for pi in range(1, len(points)) for k in range(len(folds))])
    # the point used: the grid's first unless another beats it on mean validation balanced accuracy (never on test)
    val_bacc = {pi: float(np.mean([results[("mfcc_pitch", pi, k)]["final"]["val_balanced_acc"] for k in range(len(folds))])) for pi in range(len(points))}
    chosen = 0
    for pi in range(1, len(points)):
        if val_bacc[pi] > val_bacc[chosen] + 0.005:
            chosen = pi
    if chosen:
        train([("mfcc_deltas", chosen, k) for k in range(len(folds))])

    # pitch-threshold baseline(s)
    f0, f0_timing = pitch_cache(prep.files, workdir, n_jobs)
    files = prep.files.join(f0, on="sha256")
    baseline = {name: [] for name in PITCH_VARIANTS}
    for k, split in enumerate(folds):
        tr_mask = files["speaker"].isin(split["train"] + split["val"]).to_numpy()
        te = files[files["speaker"].isin(split["test"]).to_numpy()]
        for name in PITCH_VARIANTS:
            thr = fit_threshold(files[name].to_numpy()[tr_mask], files["y"].to_numpy()[tr_mask])
            pred = (np.nan_to_num(te[name].to_numpy(), nan=0.0) < thr).astype(int)
            baseline[name].append({"threshold_hz": thr, **clip_and_speaker_metrics(te["y"].to_numpy(), pred, te["speaker"].to_numpy())})
    # per test speaker: share of clips right, for the CNNs at the point used and the pitch baseline
    per_speaker = {}
    thr = {k: base_k["threshold_hz"] for k, base_k in enumerate(baseline["f0"])}
    for k, split in enumerate(folds):
        te = files[files["speaker"].isin(split["test"]).to_numpy()]
        right = (np.nan_to_num(te["f0"].to_numpy(), nan=0.0) < thr[k]).astype(int) == te["y"].to_numpy()
        for spk_id, grp in te.assign(right=right).groupby("speaker"):
            per_speaker[spk_id] = {"fold": k, "label": LABELS[int(grp["y"].iloc[0])], "clips": len(grp), "base": float(grp["right"].mean()),
                                   "f0": float(grp["f0"].median()), "f0_hp80": float(grp["f0_hp80"].median())}
        for fs in FEATURE_SETS:
            for row in results[(fs, chosen, k)]["per_speaker"]:
                per_speaker[row["speaker"]][fs] = float(row["acc"])
    f0_stats = {name: {"no_voiced": int(files[name].isna().sum()),
                       **{LABELS[c]: float(files.loc[files["y"] == c, name].median()) for c in (0, 1)}} for name in PITCH_VARIANTS}

    # stop the worker processes now: reaped later (idle timeout) their CPU time would land in a speed measurement's rusage
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)
    return {
        "folds": folds, "points": points, "chosen": chosen, "val_bacc": val_bacc, "results": results,
        "train_wall_s": train_wall, "train_sum_s": float(sum(o["seconds"] for o in results.values())), "n_jobs": n_jobs,
        "baseline": baseline, "f0_timing": f0_timing, "f0_stats": f0_stats, "n_files": len(files), "per_speaker": per_speaker,
    }


# ----------------------------------------------------------------------------- speed
def jpeg_features(path: str, tmpdir: str):
    """The seed's pipeline: MFCC of the clip rendered to a JPEG with matplotlib, then read back as the image."""
    import librosa
    import librosa.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image
    import matplotlib.pyplot as plt

    y, sr = librosa.load(path, sr=16000)
    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=12)
    fig, ax = plt.subplots(figsize=(2.56, 2.56), dpi=100)
    librosa.display.specshow(mfcc, sr=sr, ax=ax)
    ax.axis("off")
    out = os.path.join(tmpdir, Path(path).stem + ".jpg")
    fig.savefig(out, bbox_inches="tight", pad_inches=0)
    plt.close(fig)
    return matplotlib.image.imread(out)


ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def time_loop(fn, paths: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for fn over paths, after one warm-up call, BLAS on one thread.

    One thread, like each featurize worker: on an idle machine it is as fast as the default, and on a busy one
    spin-waiting BLAS threads would slow the baseline down several-fold and make the ratios meaningless.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        fn(paths[0])  # warm-up: imports and first-call costs are not per-file work
        t0, c0 = time.perf_counter(), time.process_time()
        for p in paths:
            fn(p)
        return time.perf_counter() - t0, time.process_time() - c0


def best(runs: list[dict], key: str) -> dict:
    """The fastest of repeated runs (others on the machine only ever slow a run down); all rates kept."""
    top = max(runs, key=lambda r: r[key])
    return {**top, "all": [r[key] for r in runs]}


def run_speed(prep: Prepared, runner: Runner, workdir: Path, quick: bool, with_training: bool) -> dict:
    import pandas as pd

    from bench.plain_loop import plain_features
    from voiceclf import corpus, synth
    from voiceclf.train import GridPoint

    sp = workdir / "speed"
    sp.mkdir(parents=True, exist_ok=True)
    reps = 1 if quick else 3
    r: dict = {"reps": reps}

    def fresh(d: Path) -> Path:
        shutil.rmtree(d, ignore_errors=True)
        return d

    plain_args = no_augment()  # the same work per file as score and the plain loop: no training-only variants

    def featurize(tag: str, src: Path, fs: str, extra: list[str] = (), poll: bool = False, defaults: bool = False) -> dict:
        out = fresh(sp / f"featurize_{tag}")
        args = [shown(src), "--out", shown(out), "--feature-set", fs, *extra, *([] if defaults else plain_args)]
        res = runner.job("featurize", args, log_name=f"speed_featurize_{tag}", poll_memory=poll)
        summ = parse_summary(res["text"], "featurize summary")
        n = int(summ["files"])
        shutil.rmtree(out, ignore_errors=True)
        return {**res, "text": None, "files": n, "windows": int(summ.get("windows", 0)), "rate_e2e": n / res["wall_s"], "rate_job": float(summ["files/s"]), "cpu_ms": 1e3 * res["cpu_s"] / n}

    wavs = sorted(str(p) for p in DATA.glob("*/*.wav"))
    subset = random.Random(0).sample(wavs, 60 if quick else 300)
    r["subset"] = len(subset)

    # the champion for score: trained on synthetic voices, registered in a temporary SQLite store
    store = fresh(sp / "mlruns")
    store.mkdir(parents=True)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{(store / 'mlflow.db').resolve()}"}
    syn = fresh(sp / "synth")
    log("champion: synthetic corpus → featurize → jobs.train (1 grid point) → registered")
    t0 = time.perf_counter()
    synth.make_corpus(syn / "corpus", speakers=8, clips=10, seed=0)
    r["synth_s"] = time.perf_counter() - t0
    runner.commands.append(f"# in-process: voiceclf.synth.make_corpus({shown(syn / 'corpus')!r}, speakers=8, clips=10, seed=0)")
    runner.job("featurize", [shown(syn / "corpus"), "--out", shown(syn / "features")], log_name="speed_synth_featurize")
    epochs = "1" if quick else "2"
    r["champion_epochs"] = int(epochs)
    r["train_champion_wall_s"] = runner.job("train", ["--features", shown(syn / "features"), "--lr", "1e-3", "--epochs", epochs, "--jobs", "1"],
                                            log_name="speed_train_champion", env=env)["wall_s"]

    # rounds of: featurize (all cores, whole data, fresh output, memory polled) / plain loop (subset, in process;
    # whole data, fresh process) / score (whole data). Interleaved, so a busy spell on the shared machine hits all alike.
    fz_runs, plain_s, plain_runs, score_runs = [], [], [], []
    report = sp / "report.csv"
    for i in range(reps):
        log(f"round {i + 1}/{reps}: featurize, plain loop ({len(subset)} files in process; whole data as a process), score")
        fz_runs.append(featurize(f"full_mfcc_pitch_{i}", DATA, "mfcc_pitch", poll=True))
        plain_s.append(time_loop(plain_features, subset))
        res = runner.module("bench.plain_loop", [shown(DATA), "--out", shown(sp / "plain_loop.npz")], log_name=f"speed_plain_loop_{i}", env=ONE_THREAD)
        summ = parse_summary(res["text"], "plain loop")
        plain_runs.append({"wall_s": res["wall_s"], "files": int(summ["files"]), "rate_e2e": int(summ["files"]) / res["wall_s"], "cpu_ms": 1e3 * res["cpu_s"] / int(summ["files"])})
        res = runner.job("score", [shown(DATA), "--out", shown(report)], log_name=f"speed_score_{i}", env=env)
        summ = parse_summary(res["text"], "score summary")
        n = int(summ["files"])
        score_runs.append({"wall_s": res["wall_s"], "files": n, "rate_e2e": n / res["wall_s"], "rate_job": float(summ["files/s"]), "cpu_ms": 1e3 * res["cpu_s"] / n,
                           "first_s": summ.get("first file scored after s", "-")})
    r["fz"] = best(fz_runs, "rate_job")
    r["fz"]["peak_rss_tree"] = max(x["peak_rss_tree"] or 0 for x in fz_runs) or None
    r["fz"]["peak_rss_one"] = max(x["peak_rss_one"] or 0 for x in fz_runs) or None
    r["fz"]["all_e2e"] = [x["rate_e2e"] for x in fz_runs]
    r["plain_s"] = min(w for w, _ in plain_s)
    r["plain_all"] = [len(subset) / w for w, _ in plain_s]
    r["plain_cpu_ms"] = min(1e3 * c / len(subset) for _, c in plain_s)
    r["cpu_ms_min"] = {"fz": min(x["cpu_ms"] for x in fz_runs), "plain_e2e": min(x["cpu_ms"] for x in plain_runs), "score": min(x["cpu_ms"] for x in score_runs)}
    r["plain_e2e"] = best(plain_runs, "rate_e2e")
    r["score"] = best(score_runs, "rate_job")
    (sp / "plain_loop.npz").unlink(missing_ok=True)

    r["augment_default"] = featurize_defaults()["augment"]
    r["plain_args"] = plain_args
    if plain_args:
        log(f"featurize mfcc_pitch with the job's defaults (--augment {r['augment_default']})")
        r["fz_default"] = featurize("full_mfcc_pitch_defaults", DATA, "mfcc_pitch", poll=True, defaults=True)
    log("featurize mfcc_deltas, all cores and --jobs 1")
    r["fzd"] = featurize("full_mfcc_deltas", DATA, "mfcc_deltas")
    r["fzd1"] = featurize("full_mfcc_deltas_jobs1", DATA, "mfcc_deltas", ["--jobs", "1"])

    # a tenth of the data through a manifest, for flat memory
    df = corpus.discover(DATA).iloc[::10]
    manifest = sp / "tenth.csv"
    pd.DataFrame({"path": [os.path.relpath(Path(s) / p, sp) for s, p in zip(df["source"], df["path"])],
                  "label": df["label"], "speaker": df["speaker"]}).to_csv(manifest, index=False)
    log(f"featurize a tenth ({len(df)} files, manifest {shown(manifest)})")
    r["tenth"] = featurize("tenth", manifest, "mfcc_pitch", poll=True)

    log(f"seed pipeline (MFCC → JPEG → imread) on {len(subset)} files")
    with tempfile.TemporaryDirectory(dir=sp) as tmp:
        r["jpeg_s"], jpeg_cpu = time_loop(functools.partial(jpeg_features, tmpdir=tmp), subset)
        r["jpeg_cpu_ms"] = 1e3 * jpeg_cpu / len(subset)

    rep = pd.read_csv(report)
    truth = corpus.discover(DATA)
    truth = dict(zip(truth["source"] + "/" + truth["path"], truth["label"]))
    rep["abspath"] = [os.path.normpath(os.path.join(REPO_ROOT, p)) for p in rep["path"]]
    ok = rep[rep["status"] == "ok"]
    r["score_rows"] = {"files": len(rep), "ok": len(ok), "errors": int((rep["status"] == "error").sum()),
                       "no_speech": int((rep["status"] == "no_speech").sum()),
                       "agree": float((ok["label"] == ok["abspath"].map(truth)).mean()) if len(ok) else float("nan")}

    # training speed comes from the CV folds; without the accuracy section, time fold 0 the same way (1 torch thread)
    if not with_training:
        point = {**asdict(GridPoint()), "epochs": 2 if quick else 10}
        log(f"train fold 0 (1 torch thread, {point['epochs']} epochs) for the training speed")
        o = train_fold(str(prep.dirs["mfcc_pitch"]), point, prep.folds[0], 1)
        if o["error"]:
            raise BenchError(f"training one fold failed:\n{o['error']}")
        r["train_alone"] = o
    return r


class CpuMonitor:
    """Samples, every few seconds, how many cores this benchmark's process tree and everything else on the machine use."""

    def __init__(self, interval: float = 2.0) -> None:
        import threading

        self.interval, self.samples, self.marks = interval, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "CpuMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def mark(self, name: str) -> None:
        self.marks.append((time.time(), name))

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        me = os.getpid()

        def busy() -> float:
            t = psutil.cpu_times()
            return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)

        prev: dict = {}
        last, last_busy = time.time(), busy()
        while not self._stop.wait(self.interval):
            now, now_busy = time.time(), busy()
            try:
                procs = [psutil.Process(me), *psutil.Process(me).children(recursive=True)]
            except psutil.Error:
                continue
            ours, cur = 0.0, {}
            for p in procs:
                try:
                    key = (p.pid, p.create_time())
                    t = sum(p.cpu_times()[:2])  # user + system of live processes (an exited child's last seconds count as others')
                except psutil.Error:
                    continue
                cur[key] = t
                ours += t - prev[key] if key in prev else (t if key[1] >= last else 0.0)
            dt = now - last
            total = (now_busy - last_busy) / dt
            self.samples.append((now, min(ours / dt, total), max(0.0, total - ours / dt), os.getloadavg()[0]))
            prev, last, last_busy = cur, now, now_busy

    def summary(self, start: float, end: float) -> dict | None:
        s = [x for x in self.samples if start <= x[0] <= end]
        if not s:
            return None
        a = np.array([x[1:] for x in s])
        return {"ours_mean": float(a[:, 0].mean()), "others_mean": float(a[:, 1].mean()), "others_max": float(a[:, 1].max()), "load_max": float(a[:, 2].max())}


# ----------------------------------------------------------------------------- report
def pct(values) -> str:
    v = np.asarray(values, dtype=float)
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return f"{100 * v.mean():.1f} ± {100 * sd:.1f} %"


def mib(n: int | None) -> str:
    return "n/a" if not n else f"{n / 2**20:,.0f} MiB"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def cpu_others(cpu: dict, section: str) -> str:
    v = cpu.get(section)
    return f"{v['others_mean']:.1f}" if v else "?"


def ok_mark(passed: bool) -> str:
    return "met" if passed else "**MISSED**"


def render(args, prep: Prepared, acc: dict | None, spd: dict | None, runner: Runner, started: datetime.datetime, wall: dict, cpu: dict) -> tuple[str, list[str]]:
    import librosa
    import torch

    missed: list[str] = []
    L: list[str] = []
    add = L.append
    spk = prep.files.drop_duplicates("speaker")
    add("# voiceclf benchmark")
    add("")
    add(f"- Date: {started.isoformat(timespec='seconds')}")
    add(f"- Machine: {nproc()} CPUs (nproc), {cpu_model()}, {mem_total()} RAM; {platform.system()} {platform.release()}")
    add(f"- Software: Python {platform.python_version()}, torch {torch.__version__}, librosa {librosa.__version__}")
    add(f"- Data: `{shown(DATA)}`: {len(prep.files):,} clips with windows, {len(spk)} speakers ({int(spk['y'].eq(1).sum())} male, {int(spk['y'].eq(0).sum())} female); "
        f"{len(prep.errors)} file(s) gave no windows ({', '.join(f'`{p}` ({e})' for p, e in zip(prep.errors['path'], prep.errors['error'])) or 'none'}); "
        f"{prep.windows['mfcc_pitch']:,} windows of 1 s"
        + (f" (+ {prep.augmented['mfcc_pitch']:,} augmented training windows: the featurize job's default `--augment {prep.defaults['augment']}`)" if prep.augmented.get("mfcc_pitch") else ""))
    add(f"- Mode: {'--quick (smoke run: 2 of the 5 folds, 2 epochs, first grid point, 60-file loop subset, no repeats)' if args.quick else 'full'}; sections: {', '.join(args.sections)}")
    add(f"- Total wall time: **{wall['total'] / 60:.1f} min** (" + ", ".join(f"{k} {v / 60:.1f} min" for k, v in wall.items() if k != "total") + ")")
    busy = [f"{k}: this benchmark {v['ours_mean']:.1f}, other processes {v['others_mean']:.1f} on average (max {v['others_max']:.1f}), 1-min load ≤ {v['load_max']:.1f}" for k, v in cpu.items() if v]
    if busy:
        add(f"- CPU cores in use while it ran ({'; '.join(busy)}). The machine is shared: other processes slow a measurement down, never up, so repeated timings keep the fastest.")
    add("")
    add("## Commands")
    add("")
    add("```")
    add(f"cd {REPO_ROOT} && {python_shown()} -m bench.run " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    add("```")
    add("")
    add("which ran, from the repo root (logs in `" + shown(runner.logs) + "`):")
    add("")
    add("```")
    seen = set()
    for c in runner.commands:  # repeats of a command differ only in the output folder's suffix
        if c not in seen:
            seen.add(c)
            add(c)
    add("```")
    add("")
    inproc = []
    if acc:
        inproc += ["`voiceclf.train.train_point` per fold (joblib)", "`librosa.pyin` per clip (joblib, cached)"]
    if spd:
        inproc += ["`bench.plain_loop.plain_features` and the JPEG pipeline (`bench.run.jpeg_features`) on the random subset"]
        if "train_alone" in spd:
            inproc += ["`train_point` on fold 0 alone"]
    add("and, inside the benchmark process: " + ", ".join(inproc) + ".")
    add("")

    if acc:
        folds, points, chosen = acc["folds"], acc["points"], acc["chosen"]
        res, base = acc["results"], acc["baseline"]
        nf = len(folds)
        add(f"## Accuracy: speaker-disjoint {N_FOLDS}-fold cross-validation" + (f" (first {nf} folds only)" if nf < N_FOLDS else ""))
        add("")
        add(f"Folds: `StratifiedGroupKFold(n_splits={N_FOLDS}, shuffle=True, random_state=0)` over clips, groups = speaker, y = gender. "
            "Validation: one fold of an inner `StratifiedGroupKFold(n_splits=7, shuffle=True, random_state=fold)` over the training folds' "
            "clips (~15 % of the training speakers, both genders); the other training speakers train. Each model: `voiceclf.train.train_point(point, data, split, seed=0, threads=1)` "
            f"on the features of `jobs.featurize`; {acc['n_jobs']} models train at a time (joblib processes × 1 torch thread).")
        add("")
        add(f"Grid point used: **{point_name(points[chosen])}** (" + ("the first point of `jobs/grid.toml`" + ("; the other grid point does not beat it on validation, see below" if len(points) > 1 else "") if chosen == 0 else "beats the grid's first point on mean validation balanced accuracy, see below")
            + "). Clip level: `test_balanced_acc` of the `PointResult` (a clip's windows pooled by mean p(male)). Speaker level: `test_speaker_acc`, the share of test speakers whose clips are mostly right. Mean ± std (ddof 1) over folds.")
        add("")
        b = {name: ([x["test_balanced_acc"] for x in v], [x["test_speaker_acc"] for x in v]) for name, v in base.items()}
        b_clip, b_spk = b["f0"]
        add("| method | clip balanced accuracy | speaker accuracy | clip error ÷ pitch baseline's | speaker error ÷ pitch baseline's | target (clip / speaker) |")
        add("|---|---|---|---|---|---|")

        def ratio(vals, ref):
            den = 1 - np.mean(ref)
            return f"{(1 - np.mean(vals)) / den:.2f}×" if den > 0 else "n/a"

        for fs in FEATURE_SETS:
            clip = [res[(fs, chosen, k)]["test"]["test_balanced_acc"] for k in range(nf)]
            spkacc = [res[(fs, chosen, k)]["test"]["test_speaker_acc"] for k in range(nf)]
            target = ""
            if fs == "mfcc_pitch":
                c_ok, s_ok = np.mean(clip) >= TARGETS["clip_bacc"], np.mean(spkacc) >= TARGETS["speaker_acc"]
                target = f"≥ 95 %: {ok_mark(c_ok)} / ≥ 98 %: {ok_mark(s_ok)}"
                if not c_ok:
                    missed.append(f"mfcc_pitch clip-level balanced accuracy {100 * np.mean(clip):.1f} % < 95 %")
                if not s_ok:
                    missed.append(f"mfcc_pitch speaker-level accuracy {100 * np.mean(spkacc):.1f} % < 98 %")
            add(f"| CNN, `{fs}` | {pct(clip)} | {pct(spkacc)} | {ratio(clip, b_clip)} | {ratio(spkacc, b_spk)} | {target} |")
        add(f"| pitch threshold: pyin median F0 | {pct(b_clip)} | {pct(b_spk)} | 1× | 1× | |")
        hc, hs = b["f0_hp80"]
        add(f"| pitch threshold, extra 80 Hz high-pass before pyin (diagnostic) | {pct(hc)} | {pct(hs)} | {ratio(hc, b_clip)} | {ratio(hs, b_spk)} | |")
        add("")
        add("Per fold: clip balanced accuracy / speaker accuracy, in %; speakers as female+male:")
        add("")
        add("| fold | test speakers | val speakers | CNN `mfcc_deltas` | CNN `mfcc_pitch` | pitch baseline (threshold) | + 80 Hz high-pass (threshold) |")
        add("|---|---|---|---|---|---|---|")
        g = spk.set_index("speaker")["y"]
        for k, split in enumerate(folds):
            def fm(s):
                return f"{int(g[s].eq(0).sum())}+{int(g[s].eq(1).sum())}"
            cells = [f"{100 * res[(fs, chosen, k)]['test']['test_balanced_acc']:.1f} / {100 * res[(fs, chosen, k)]['test']['test_speaker_acc']:.1f}" for fs in FEATURE_SETS]
            bc = [f"{100 * base[n][k]['test_balanced_acc']:.1f} / {100 * base[n][k]['test_speaker_acc']:.1f} ({base[n][k]['threshold_hz']:.0f} Hz)" for n in PITCH_VARIANTS]
            add(f"| {k} | {fm(split['test'])} | {fm(split['val'])} | {cells[0]} | {cells[1]} | {bc[0]} | {bc[1]} |")
        add("")
        if len(points) > 1:
            add("The grid points of `jobs/grid.toml` on the same folds. The other points train on `mfcc_pitch` only (the set with targets); one replaces the first only if its mean validation balanced accuracy is higher by more than 0.5 point (chosen on validation, never on test):")
            add("")
            add("| grid point | feature set | mean val balanced acc | test clip balanced acc | test speaker acc |")
            add("|---|---|---|---|---|")
            for pi, p in enumerate(points):
                for fs in FEATURE_SETS:
                    if (fs, pi, 0) not in res:
                        continue
                    rr = [res[(fs, pi, k)] for k in range(nf)]
                    add(f"| lr {p['lr']:g}{' (used)' if pi == chosen else ''} | `{fs}` | {100 * np.mean([x['final']['val_balanced_acc'] for x in rr]):.1f} % | "
                        f"{pct([x['test']['test_balanced_acc'] for x in rr])} | {pct([x['test']['test_speaker_acc'] for x in rr])} |")
            add("")
        hard = sorted(((sid, v) for sid, v in acc["per_speaker"].items() if min(v.get(fs, 1.0) for fs in FEATURE_SETS) < 0.9), key=lambda kv: kv[1].get("mfcc_pitch", 1.0))
        if hard:
            add("Test speakers with fewer than 90 % of their clips right under either CNN (share of clips right, in %; median pyin F0 of their clips):")
            add("")
            add("| speaker | fold | gender | clips | CNN `mfcc_pitch` | CNN `mfcc_deltas` | pitch baseline | median F0 | median F0, + 80 Hz high-pass |")
            add("|---|---|---|---|---|---|---|---|---|")
            for sid, v in hard:
                add(f"| {Path(sid).name} | {v['fold']} | {v['label']} | {v['clips']} | {100 * v.get('mfcc_pitch', float('nan')):.0f} | {100 * v.get('mfcc_deltas', float('nan')):.0f} | "
                    f"{100 * v['base']:.0f} | {v['f0']:.0f} Hz | {v['f0_hp80']:.0f} Hz |")
            add("")
        ft, st = acc["f0_timing"], acc["f0_stats"]
        rate = ft["files"] / ft["seconds"] if ft.get("seconds") else float("nan")
        add(f"Pitch baseline: `librosa.pyin(y, fmin={PYIN_FMIN:g}, fmax={PYIN_FMAX:g}, sr=16000)` on the waveform of `voiceclf.audio.load` (DC removal, 50 Hz high-pass, peak level), median F0 over the voiced frames; "
            "one threshold per fold, fitted on the training folds' clips (train + val speakers) to maximise balanced accuracy, male below it; a clip without a voiced frame counts as 0 Hz (male). "
            f"Median clip F0: female {st['f0']['female']:.0f} Hz, male {st['f0']['male']:.0f} Hz; {st['f0']['no_voiced']} of {acc['n_files']} clips without a voiced frame. "
            f"The diagnostic row runs pyin after a further zero-phase 80 Hz high-pass (`sosfiltfilt`, 4th order): median F0 female {st['f0_hp80']['female']:.0f} Hz, male {st['f0_hp80']['male']:.0f} Hz, "
            f"{st['f0_hp80']['no_voiced']} clips without a voiced frame. "
            f"pyin cost: {ft.get('files', 0)} clips × {ft.get('variants', 1)} variants in {ft.get('seconds', float('nan')):.0f} s on {ft.get('n_jobs', '?')} processes ({rate:.1f} clips/s)"
            + (f", measured {ft.get('date')} and read from the cache (`{shown(Path(args.workdir) / 'pitch' / 'f0.parquet')}`) in this run." if ft.get("cached") else ", measured in this run, cached for the next."))
        add("")
        per = [v["seconds"] / v["epochs"] / v["train_windows"] * 1e4 for v in res.values()]
        line = (f"Training: {len(res)} models in {acc['train_wall_s']:.0f} s wall, {acc['n_jobs']} at a time × 1 torch thread; their own times add up to {acc['train_sum_s']:.0f} s "
                f"({acc['train_sum_s'] / acc['train_wall_s']:.2f}× the wall time). Per model {np.median(per):.1f} s per epoch per 10k training windows (median; "
                f"{np.min(per):.1f}–{np.max(per):.1f}).")
        add(line)
        add("")

    if spd:
        fz, fzd, fzd1, tenth, pe, sc = spd["fz"], spd["fzd"], spd["fzd1"], spd["tenth"], spd["plain_e2e"], spd["score"]
        plain = spd["subset"] / spd["plain_s"]
        jpeg = spd["subset"] / spd["jpeg_s"]
        reps = spd["reps"]
        rep_note = f"best of {reps}" if reps > 1 else "one run"

        def rates(x):
            return ", ".join(f"{v:.0f}" for v in x.get("all", [x.get("rate_job", x.get("rate_e2e"))]))

        add("## Speed")
        add("")
        add(f"Every ratio is against a baseline timed in this run on this machine. **job** = the files/s a job reports in its summary line (its parallel loop: worker start-up included, "
            f"interpreter start-up, imports and hashing not); **end to end** = files ÷ wall clock of the whole command. "
            f"The plain loop (`bench/plain_loop.py`) and the seed's JPEG pipeline are timed in the benchmark process on the same {spd['subset']} random WAVs (seed 0) after one warm-up call, with BLAS/OpenMP on one thread like each featurize worker, "
            f"and the plain loop also as a fresh process over the whole data, like the job. Repeated timings: {rep_note} (all runs listed)."
            + (f" Featurize runs pass `{' '.join(spd['plain_args'])}` so that a file costs what it costs in score and in the plain loop (the job's default `--augment {spd['augment_default']}` "
               "adds training-only variants of every labelled file); one run with the defaults is listed too." if spd["plain_args"] else ""))
        add("")
        add("| measurement | value | baseline | ratio | target |")
        add("|---|---|---|---|---|")
        t_ratio = fz["rate_job"] / plain
        t_ok = t_ratio >= TARGETS["featurize_vs_plain"]
        if not t_ok:
            missed.append(f"featurize: {fz['rate_job']:.0f} files/s (job) is {t_ratio:.2f}× the plain single-process loop's {plain:.0f} files/s (target ≥ 3×); end to end {max(fz['all_e2e']) / pe['rate_e2e']:.2f}×")
        aug = " ".join(spd["plain_args"])
        add(f"| featurize `mfcc_pitch` (default){f' `{aug}`' if aug else ''}, all cores, whole data ({fz['files']:,} files), fresh output | job {fz['rate_job']:.0f} files/s ({rates(fz)}) | plain librosa loop, 1 process, {spd['subset']} files: {plain:.0f} files/s ({', '.join(f'{v:.0f}' for v in spd['plain_all'])}) | **{t_ratio:.2f}×** | ≥ 3×: {ok_mark(t_ok)} |")
        add(f"| same, end to end | {max(fz['all_e2e']):.0f} files/s ({', '.join(f'{v:.0f}' for v in fz['all_e2e'])}) | plain loop, fresh process, whole data: {pe['rate_e2e']:.0f} files/s ({pe['wall_s']:.1f} s; {', '.join(f'{v:.0f}' for v in pe['all'])}) | {max(fz['all_e2e']) / pe['rate_e2e']:.2f}× | |")
        add(f"| featurize `mfcc_pitch`, job | {fz['rate_job']:.0f} files/s | seed pipeline (MFCC → JPEG → imread), 1 process: {jpeg:.1f} files/s | **{fz['rate_job'] / jpeg:.1f}×** | |")
        add(f"| featurize `mfcc_deltas` (the plain loop's features), all cores | job {fzd['rate_job']:.0f}, end to end {fzd['rate_e2e']:.0f} files/s | plain loop: {plain:.0f} (subset), {pe['rate_e2e']:.0f} (end to end) files/s | {fzd['rate_job'] / plain:.2f}× / {fzd['rate_e2e'] / pe['rate_e2e']:.2f}× | |")
        add(f"| featurize `mfcc_deltas`, `--jobs 1` | job {fzd1['rate_job']:.0f}, end to end {fzd1['rate_e2e']:.0f} files/s | plain loop: {plain:.0f} (subset), {pe['rate_e2e']:.0f} (end to end) files/s | {fzd1['rate_job'] / plain:.2f}× / {fzd1['rate_e2e'] / pe['rate_e2e']:.2f}× | |")
        add(f"| featurize `mfcc_deltas`, all cores | job {fzd['rate_job']:.0f} files/s | the same job with `--jobs 1`: {fzd1['rate_job']:.0f} files/s | {fzd['rate_job'] / fzd1['rate_job']:.2f}× (on {nproc()} CPUs) | |")
        if "fz_default" in spd:
            fdf = spd["fz_default"]
            add(f"| featurize `mfcc_pitch` with the job's defaults (`--augment {spd['augment_default']}`: {fdf['windows']:,} windows instead of {fz['windows']:,}) | job {fdf['rate_job']:.0f}, end to end {fdf['rate_e2e']:.0f} files/s; "
                f"peak RSS {mib(fdf['peak_rss_tree'])} | plain loop: {plain:.0f} (subset), {pe['rate_e2e']:.0f} (end to end) files/s | {fdf['rate_job'] / plain:.2f}× / {fdf['rate_e2e'] / pe['rate_e2e']:.2f}× | |")
        s_ratio = sc["rate_job"] / fz["rate_job"]
        s_ok = s_ratio >= TARGETS["score_vs_featurize"]
        if not s_ok:
            missed.append(f"score: {sc['rate_job']:.0f} files/s (job) is {s_ratio:.2f}× featurize alone (target ≥ 0.7×)")
        add(f"| score with the champion (`mfcc_pitch`), all cores, whole data ({sc['files']:,} files) | job {sc['rate_job']:.0f} files/s ({rates(sc)}); first file scored after {sc['first_s']} s | featurize alone, same files: job {fz['rate_job']:.0f} files/s | **{s_ratio:.2f}×** | ≥ 0.7×: {ok_mark(s_ok)} |")
        add(f"| same, end to end | {sc['rate_e2e']:.0f} files/s ({sc['wall_s']:.1f} s) | featurize alone, end to end: {fz['rate_e2e']:.0f} files/s | {sc['rate_e2e'] / fz['rate_e2e']:.2f}× | |")
        mem_ratio = (fz["peak_rss_tree"] / tenth["peak_rss_tree"]) if fz.get("peak_rss_tree") and tenth.get("peak_rss_tree") else float("nan")
        m_ok = mem_ratio <= 1.25
        if not m_ok:
            missed.append(f"featurize peak memory, whole data ÷ a tenth = {mem_ratio:.2f}× (not flat)")
        add(f"| featurize peak RSS, process tree, whole data | {mib(fz['peak_rss_tree'])} (largest process {mib(fz['peak_rss_one'])}) | a tenth ({tenth['files']} files, manifest CSV): {mib(tenth['peak_rss_tree'])} (largest {mib(tenth['peak_rss_one'])}) | **{mem_ratio:.2f}×** | flat (≈ 1×): {ok_mark(m_ok)} |")
        if acc:
            per = [v["seconds"] / v["epochs"] / v["train_windows"] * 1e4 for v in acc["results"].values()]
            add(f"| train, s per epoch per 10k training windows (`PointResult.seconds` ÷ epochs ÷ training windows) | median {np.median(per):.1f} s (range {np.min(per):.1f}–{np.max(per):.1f}) over the {len(per)} CV models, "
                f"1 torch thread each, {acc['n_jobs']} at a time: {np.median(per) / acc['n_jobs']:.1f} s per 10k window-epochs for the machine | | | |")
        else:
            ta = spd["train_alone"]
            add(f"| train, s per epoch per 10k training windows (`PointResult.seconds` ÷ epochs ÷ training windows) | {ta['seconds'] / ta['epochs'] / ta['train_windows'] * 1e4:.1f} s: fold 0 alone, 1 torch thread | | | |")
        add("")
        c = spd["cpu_ms_min"]
        add("CPU time per file (user + system of the process and all its workers, lowest of the repeats): a view of the work done that other load on the machine barely moves, unlike files/s.")
        add("")
        add("| run | CPU ms per file | ÷ plain loop's |")
        add("|---|---|---|")
        for name, v in (("featurize `mfcc_pitch`, all cores (whole job)", c["fz"]),
                        *((("featurize `mfcc_pitch`, job defaults (augmented variants too)", spd["fz_default"]["cpu_ms"]),) if "fz_default" in spd else ()), ("featurize `mfcc_deltas`, all cores (whole job)", fzd["cpu_ms"]),
                        ("featurize `mfcc_deltas`, `--jobs 1` (whole job)", fzd1["cpu_ms"]), ("score, all cores (whole job)", c["score"]),
                        ("plain loop, fresh process over the whole data", c["plain_e2e"]), ("plain loop, in process, subset", spd["plain_cpu_ms"]),
                        ("seed JPEG pipeline, in process, subset", spd["jpeg_cpu_ms"])):
            add(f"| {name} | {v:.2f} | {v / c['plain_e2e']:.2f}× |")
        add("")
        sr = spd["score_rows"]
        add(f"Notes. Peak RSS is polled every 50 ms over the job and all its worker processes (summed; pages shared between processes count once per process). "
            f"The champion exists for speed only: synthetic corpus of 8 speakers × 10 clips ({spd['synth_s']:.0f} s to make), `jobs.train` with one grid point, "
            f"{spd['champion_epochs']} epoch(s), {spd['train_champion_wall_s']:.0f} s end to end, into a temporary SQLite store in the workdir where it is registered as `voiceclf@champion`. "
            f"Its report: {sr['files']} rows ({sr['ok']} ok, {sr['no_speech']} no speech, {sr['errors']} errors, the non-audio files); this synthetic-trained model agrees with the real labels on "
            f"{100 * sr['agree']:.1f} % of the clips (not an accuracy claim).")
        add("")

    add("## Targets missed")
    add("")
    add("\n".join(f"- {m}" for m in missed) if missed else "None.")
    add("")
    return "\n".join(L), missed


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description="Benchmark voiceclf on ../shared/data/audiomnist_az (accuracy and speed).")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 folds, 2 epochs, one grid point, small loop subset")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results.md", help="results Markdown (default %(default)s)")
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench" / "work", help="scratch: features, caches, logs (default %(default)s)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    p.add_argument("--jobs", type=int, default=-1, help="parallel processes for training folds and pyin (-1 = all cores)")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad or not args.sections:
        p.error(f"--sections: expected a subset of {','.join(SECTIONS)}, got {bad or 'nothing'}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not DATA.is_dir():
        print(f"bench: reference data not found at {DATA}; nothing to benchmark (skipped).")
        return 0
    started = datetime.datetime.now().astimezone()
    t_start = time.perf_counter()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    n_jobs = (os.cpu_count() or 1) if args.jobs == -1 else max(1, args.jobs)
    runner = Runner(workdir)
    wall: dict[str, float] = {}
    cpu: dict[str, dict | None] = {}
    acc = spd = None
    with CpuMonitor() as mon:
        def timed(name, fn):
            t0, w0 = time.perf_counter(), time.time()
            out = fn()
            wall[name] = time.perf_counter() - t0
            cpu[name] = mon.summary(w0, time.time())
            return out
        try:
            prep = timed("featurize for CV", lambda: Prepared(runner, workdir))
            if "accuracy" in args.sections:
                acc = timed("accuracy", lambda: run_accuracy(prep, workdir, args.quick, n_jobs))
            if "speed" in args.sections:
                spd = timed("speed", lambda: run_speed(prep, runner, workdir, args.quick, with_training=acc is not None))
        except BenchError as e:
            print(f"bench: error: {e}", file=sys.stderr)
            return 1
    total = time.perf_counter() - t_start
    text, missed = render(args, prep, acc, spd, runner, started, {"total": total, **wall}, cpu)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    log(f"wrote {shown(out)} after {total / 60:.1f} min; targets missed: {len(missed)}")
    for m in missed:
        log(f"  missed: {m}")
    return 0


if __name__ == "__main__":
    # Run through the package module so joblib workers can import the worker functions by name.
    from bench.run import main as _main

    sys.exit(_main())
