"""Running the project's jobs as processes and watching the machine: wall and CPU time, peak memory,
a job's summary line, and how much CPU other processes took while the benchmark ran."""
from __future__ import annotations

import os
import re
import resource
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from voiceclf.config import REPO_ROOT


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def shown(path: Path | str) -> str:
    """A path as it appears in commands run from the repo root: relative when near the repo."""
    p = Path(os.path.abspath(path))
    for base in (REPO_ROOT, REPO_ROOT.parent):
        if p.is_relative_to(base):
            return os.path.relpath(p, REPO_ROOT)
    return str(p)


def python_shown() -> str:
    return shown(sys.executable) if Path(sys.executable).is_relative_to(REPO_ROOT) else "python"


class Runner:
    """Runs ``python -m <module>`` from the repo root, logs to the workdir, records every command."""

    def __init__(self, workdir: Path) -> None:
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.commands: list[str] = []

    def job(self, name: str, args: list[str], **kw) -> dict:
        return self.module(f"jobs.{name}", args, **kw)

    def module(self, module: str, args: list[str], *, log_name: str, env: dict | None = None, poll_memory: bool = False) -> dict:
        """Run to the end; raise BenchError unless it exits 0. Returns wall_s, cpu_s (the process and every
        worker it reaped: barely moved by other load), the log text and, when polled, peak RSS in bytes."""
        cmd = [sys.executable, "-m", module, *args]
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        self.commands.append((prefix + " " if prefix else "") + shlex.join([python_shown(), "-m", module, *args]))
        full_env = {**os.environ, "CI": "1", **(env or {})}  # CI: plain log lines, no progress bars
        log_path = self.logs / f"{log_name}.log"
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(log_path, "w") as lf:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            peak_tree, peak_one, peak_worker = poll_rss(proc) if poll_memory else (None, None, None)
            rc = proc.wait()
            wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        text = log_path.read_text(errors="replace")
        if rc != 0:
            raise BenchError(f"{shlex.join(cmd)} exited {rc}; log {log_path}:\n{text[-3000:]}")
        return {"wall_s": wall, "cpu_s": cpu_s, "text": text, "peak_rss_tree": peak_tree, "peak_rss_one": peak_one,
                "peak_rss_worker": peak_worker, "log": str(log_path)}


def poll_rss(proc: subprocess.Popen, interval: float = 0.05) -> tuple[int | None, int | None, int | None]:
    """Peak RSS of a process tree while it runs: (sum over the tree, largest single process, largest
    process but the root: a worker), bytes."""
    try:
        import psutil
    except ImportError:
        return None, None, None
    root = psutil.Process(proc.pid)
    peak_tree = peak_one = peak_worker = 0
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
            if p is not root:
                peak_worker = max(peak_worker, rss)
        peak_tree = max(peak_tree, total)
        time.sleep(interval)
    return peak_tree, peak_one, peak_worker


def parse_summary(text: str, title: str) -> dict[str, str]:
    """The ``<title>: k=v, k=v`` (or ``<title> (<what>): k=v, ...``) log line a job writes at the end (last one
    wins); {} when there is none."""
    found = None
    pattern = re.compile(rf"{re.escape(title)}(?: \([^)]*\))?: (.*=.*)$")
    for line in text.splitlines():
        m = pattern.search(line)
        if m:
            found = m.group(1)
    out = {}
    for part in (found or "").split(", "):
        k, sep, v = part.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def shutdown_workers() -> None:
    """Stop joblib's reusable worker processes now: reaped later (idle timeout), their CPU time would land
    in the rusage of a speed measurement."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


class CpuMonitor:
    """Samples, every few seconds, how many cores this benchmark's process tree and everything else on the machine use."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "CpuMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

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
        """Mean cores used by the benchmark and by other processes between two time.time() stamps."""
        s = [x for x in self.samples if start <= x[0] <= end]
        if not s:
            return None
        a = np.array([x[1:] for x in s])
        return {"ours_mean": float(a[:, 0].mean()), "others_mean": float(a[:, 1].mean()), "others_max": float(a[:, 1].max()), "load_max": float(a[:, 2].max())}
