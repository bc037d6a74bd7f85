"""Speaker-embedding featurize, numpy encoder vs the torch one it replaced: files/s ratio and peak worker RSS.

Both run from this interpreter on the same files, interleaved (A B A B …) so shared-machine load hits both
alike; only ratios are worth quoting. The torch side is this repo at ``--base`` (a commit before the numpy
encoder), exported to a temporary folder with ``git archive``.

    python -m bench.embed_speed --files 300 --rounds 2 [--base e93e7be~1]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import poll_rss

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path("/work/shared/data/audiomnist_az")


def manifest(out: Path, files: int, corpus: str = "audiomnist_az") -> Path:
    """A manifest of ``files`` clips (absolute paths): AudioMNIST-AZ's speakers in turn, or another corpus's manifest rows."""
    if corpus != "audiomnist_az":
        root = CORPUS.parent / corpus
        with open(root / "manifest.csv", newline="") as f:
            rows = [(str(root / r["path"]), r["label"], r["speaker"]) for r in csv.DictReader(f)][:files]
        path = out / "manifest.csv"
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([("path", "label", "speaker"), *rows])
        return path
    meta = json.loads((CORPUS / "audioMNIST_meta.txt").read_text())
    per = {s: sorted((CORPUS / s).glob("*.wav")) for s in sorted(meta)}
    rows, i = [], 0
    while len(rows) < files:
        for s, paths in per.items():
            if i < len(paths) and len(rows) < files:
                rows.append((str(paths[i]), meta[s]["gender"], f"az_{s}"))
        i += 1
    path = out / "manifest.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "speaker"), *rows])
    return path


def run(tree: Path, man: Path, out: Path, jobs: int) -> dict:
    cmd = [sys.executable, "-m", "jobs.featurize", str(man), "--out", str(out), "--feature-set", "speaker_embedding",
           "--allow-outside-paths", "--jobs", str(jobs)]
    t0 = time.perf_counter()
    out.mkdir(parents=True)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tree, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "CI": "1"})
        _, _, peak_worker = poll_rss(proc)
    if proc.wait() != 0:
        raise SystemExit(f"{cmd} exited {proc.returncode}: {(out / 'log.txt').read_text()[-2000:]}")
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the job and every worker it reaped: barely moved by other load
    cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_s, "peak_worker_mb": (peak_worker or 0) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--corpus", default="audiomnist_az", help="a folder of /work/shared/data (its manifest.csv unless AudioMNIST)")
    ap.add_argument("--base", default="e93e7be~1", help="the commit whose torch encoder is the reference")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        base.mkdir()
        subprocess.run(f"git -C {REPO} archive {args.base} | tar -x -C {base}", shell=True, check=True)
        man = manifest(tmp, args.files, args.corpus)
        res = {"numpy": [], "torch": []}
        for r in range(args.rounds):
            for name, tree in (("torch", base), ("numpy", REPO)) if r % 2 == 0 else (("numpy", REPO), ("torch", base)):
                res[name].append(run(tree, man, tmp / f"out-{name}-{r}" / "feat", args.jobs))
                print(name, r, res[name][-1], flush=True)
        fps = {k: args.files * len(v) / sum(x["wall_s"] for x in v) for k, v in res.items()}
        cpu = {k: sum(x["cpu_s"] for x in v) for k, v in res.items()}
        print(f"CPU numpy/torch = {cpu['numpy'] / cpu['torch']:.3f}; files/s numpy/torch = {fps['numpy'] / fps['torch']:.3f} ({args.corpus}, {args.files} files, {args.rounds} rounds each, "
              f"--jobs {args.jobs}, 2 variants); peak worker RSS MB: numpy {max(x['peak_worker_mb'] for x in res['numpy']):.0f}, "
              f"torch {max(x['peak_worker_mb'] for x in res['torch']):.0f}")


if __name__ == "__main__":
    main()
