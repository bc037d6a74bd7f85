"""Memory on long recordings: peak RSS of featurize and score on one synthetic file of 20 and 60 minutes
(and 10 hours for score), each a fresh process with two workers, as a user runs it.

    python -m bench.longfile [--minutes 20 60] [--hours 10] [--workdir bench/work]

Run alone it prints its lines; ``bench.speed`` calls :func:`run` and the report shows them (issue 13, item 15:
a worker's peak memory must not grow with a file's length; target < 500 MB).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

from bench.procs import Runner, log, shown
from voiceclf import synth
from voiceclf.config import REPO_ROOT

#: A worker's peak RSS on a file of any length must stay below this (issue 13, item 15).
TARGET_PEAK_BYTES = 500 * 2**20


def long_folder(root: Path, seconds: float) -> Path:
    """``root/long_<s>s/female/long.wav``: one synthetic speaker for ``seconds`` (label-folder layout), made once."""
    d = root / f"long_{int(seconds)}s"
    wav = d / "female" / "long.wav"
    if not wav.exists():
        wav.parent.mkdir(parents=True, exist_ok=True)
        tmp = wav.with_name(".long.wav")
        synth.write_long_recording(tmp, "female", seconds, seed=3)
        tmp.replace(wav)
    return d


def featurize_peak(runner: Runner, folder: Path, out: Path, tag: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    res = runner.job("featurize", [shown(folder), "--out", shown(out), "--variants", "0", "--jobs", "2"], log_name=f"long_featurize_{tag}", poll_memory=True)
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": res["wall_s"], "cpu_s": res["cpu_s"], "peak_rss_tree": res["peak_rss_tree"], "peak_rss_one": res["peak_rss_one"], "peak_rss_worker": res["peak_rss_worker"]}


def score_peak(runner: Runner, folder: Path, report: Path, env: dict, tag: str, device: str = "cpu") -> dict:
    res = runner.job("score", [shown(folder), "--out", shown(report), "--jobs", "2", "--device", device], log_name=f"long_score_{tag}", env=env, poll_memory=True)
    row = pd.read_csv(report).iloc[0].to_dict()
    return {"wall_s": res["wall_s"], "cpu_s": res["cpu_s"], "peak_rss_tree": res["peak_rss_tree"], "peak_rss_one": res["peak_rss_one"], "peak_rss_worker": res["peak_rss_worker"],
            "status": row["status"], "label": row["label"], "windows": row["windows"], "duration_s": row["duration_s"]}


def run(runner: Runner, workdir: Path, champion_env: dict | None, minutes=(20, 60), score_hours=(10,), device: str = "cpu") -> dict:
    """Peak RSS per length: featurize for each of ``minutes``; score too when a champion's env is given, also for ``score_hours``."""
    lw = workdir / "long"
    out: dict = {"featurize": {}, "score": {}}
    for m in minutes:
        log(f"long file: {m} min, featurize (peak RSS)")
        folder = long_folder(lw, 60.0 * m)
        out["featurize"][m] = featurize_peak(runner, folder, lw / "features", f"{m}min")
        if champion_env:
            log(f"long file: {m} min, score (peak RSS)")
            out["score"][m] = score_peak(runner, folder, lw / "report.csv", champion_env, f"{m}min", device)
    for h in score_hours if champion_env else ():
        log(f"long file: {h} h, score (peak RSS)")
        folder = long_folder(lw, 3600.0 * h)
        out["score"][60 * h] = score_peak(runner, folder, lw / "report.csv", champion_env, f"{h}h", device)
        shutil.rmtree(folder)  # a 10-hour WAV is over a gigabyte
    return out


def lines(res: dict) -> list[str]:
    """Markdown table rows: one per job and length."""
    mib = lambda b: f"{b / 2**20:,.0f} MiB" if b else "n/a"  # noqa: E731
    rows = []
    for job, by_len in (("featurize", res["featurize"]), ("score", res["score"])):
        for m, r in sorted(by_len.items()):
            what = f"{m // 60} h" if m >= 120 else f"{m} min"
            ok = r["peak_rss_worker"] is not None and r["peak_rss_worker"] < TARGET_PEAK_BYTES
            extra = f"; {r['status']}, {r['label']}, {int(r['windows'])} windows" if job == "score" else ""
            rows.append(f"| {job}, one {what} file, `--jobs 2` | worker **{mib(r['peak_rss_worker'])}**, largest process {mib(r['peak_rss_one'])}, "
                        f"tree {mib(r['peak_rss_tree'])}; {r['wall_s']:.0f} s wall{extra} | worker < 500 MB: {'yes' if ok else '**no**'} |")
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.longfile", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=int, nargs="*", default=[20, 60])
    p.add_argument("--hours", type=int, nargs="*", default=[10], help="score only (needs a champion; trained here)")
    p.add_argument("--no-score", action="store_true", help="featurize only (no champion is trained)")
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench" / "work")
    args = p.parse_args(argv)
    workdir = args.workdir.resolve()
    runner = Runner(workdir)
    env = None
    if not args.no_score:
        from bench import speed

        env = speed.champions(runner, workdir / "speed", feature_sets=("mfcc_pitch",))["mfcc_pitch"]["env"]
    res = run(runner, workdir, env, args.minutes, args.hours)
    print("\n".join(lines(res)))


if __name__ == "__main__":
    main()
