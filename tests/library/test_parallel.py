"""voiceclf.parallel's workers: what they import before their first task, and that they end with their job."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, voice_clip


# ----------------------------------------------------------------------------- workers of a dead job
def children(pid: int) -> dict[int, str]:
    """Live (not zombie) child processes of ``pid``: pid → command line."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            out[int(entry)] = cmdline
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_loky_workers_exit_when_their_job_is_killed(tmp_path):
    """SIGKILL the job while its workers are at work: they end with it (no orphan keeps a core busy).

    No race with the job's own end: once both workers have spent CPU on files, the job's whole process
    group is stopped (SIGSTOP) and found still running before its parent is killed. A stopped worker still
    dies of SIGKILL, the signal the kernel sends it when its parent dies.
    """
    import signal
    import time

    import soundfile as sf

    from voiceclf import synth

    # labelled (AudioMNIST layout), so that every file also makes its augmented variants: ~15 s of work, where the kill comes ~2 s in
    src = tmp_path / "src"
    synth.make_corpus(src, speakers=2, clips=1, seed=5)
    rng = np.random.default_rng(0)
    for i in range(24):
        y = np.tile(voice_clip(0.8, f0=110 + 5 * i), 75) + 0.01 * rng.standard_normal(75 * 12800).astype(np.float32)
        spk = f"{i % 2 + 1:02d}"
        sf.write(src / spk / f"9_{spk}_{i + 10}.wav", y, 16000, subtype="PCM_16")
    proc = subprocess.Popen([sys.executable, "-m", "jobs.featurize", src, "--variants", "8",
                             "--out", tmp_path / "out", "--jobs", "2"], start_new_session=True,
                            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.time() + 120
        while True:  # both workers seen, each past its imports (~1 s of CPU) and into the files
            workers = {p for p, cmd in children(proc.pid).items() if "loky" in cmd and "resource_tracker" not in cmd}
            if len(workers) >= 2 and all(cpu_seconds(p) > 2.0 for p in workers):
                break
            assert proc.poll() is None and time.time() < deadline, "the job ended before its workers were at work"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGSTOP)
        assert proc.poll() is None, "the job ended before it could be stopped: give it more work"
        proc.kill()
        proc.wait()
        deadline = time.time() + 15
        while any(alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.2)
        left = [p for p in workers if alive(p)]
        assert not left, f"workers {left} outlived their job"
    finally:
        proc.kill()
        for p in workers:  # never leave them behind, even when the test fails
            if alive(p):
                os.kill(p, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):  # the rest of the stopped group (loky's resource trackers) ends too
            os.killpg(proc.pid, signal.SIGCONT)


def test_librosa_gufuncs_are_compiled_in_the_parent_before_any_worker_starts(tmp_path):
    """Workers compiling numba's cached gufuncs at once can write a mismatched cache pair that crashes
    every later process with SIGSEGV (numba#10128); the parent compiles them first, in one process."""
    code = ("import sys\nfrom voiceclf import parallel\nwith parallel.engine('loky'):\n"
            "    print('librosa.core.pitch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert list(tmp_path.rglob("pitch._pi_wrapper-*.nbi")), "the gufunc cache was not written before the workers"


def test_a_worker_imports_its_preload_and_freezes_it_before_its_first_task(tmp_path):
    """What a loky worker imports as it starts (its featurize modules) stays out of the cyclic collector's
    work for the worker's life and at its exit (gc.freeze), which cost ~1 s at every embedding job's end."""
    code = ("import gc, sys\nfrom voiceclf import parallel\n"
            "def probe(_):\n    import gc, sys\n    return gc.get_freeze_count(), 'json.decoder' in sys.modules\n"
            "with parallel.engine('loky', preload=('json',)):\n"
            "    print(list(parallel.imap(probe, range(2), n_jobs=2)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    import ast

    got = ast.literal_eval(out.stdout.strip())
    assert len(got) == 2 and all(frozen > 1000 and json for frozen, json in got), got


def test_prestarted_workers_serve_the_engine_with_their_preload_and_another_preload_gets_its_own(tmp_path):
    """parallel.prestart starts the workers while the parent still lists files: the engine with the same preload
    runs on those very processes (they imported it before the engine began), which live on after prestart returns;
    an engine with another preload gets workers that imported that one."""
    (tmp_path / "stamp.py").write_text(f"import os, time\nT = time.time()\nopen(os.path.join({str(tmp_path)!r}, f'up-{{os.getpid()}}'), 'w').close()\n")
    code = ("import os, sys, time\nfrom voiceclf import parallel\n"
            "def probe(_):\n    import os, sys\n    return os.getpid(), getattr(sys.modules.get('stamp'), 'T', None), 'csv' in sys.modules\n"
            "parallel.prestart(2, ('stamp',))\n"
            f"while len([f for f in os.listdir({str(tmp_path)!r}) if f.startswith('up-')]) < 2:\n    time.sleep(0.05)\n"
            "t = time.time()\n"
            "with parallel.engine('loky', preload=('stamp',)):\n"
            "    print(t, sorted(set(parallel.imap(probe, range(8), n_jobs=2))))\n"
            "with parallel.engine('loky', preload=('csv',)):\n"
            "    print(sorted(set(parallel.imap(probe, range(8), n_jobs=2))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))})
    assert out.returncode == 0, out.stderr[-2000:]
    import ast

    lines = out.stdout.splitlines()
    t, first = lines[0].split(" ", 1)
    first, second = ast.literal_eval(first), ast.literal_eval(lines[1])
    assert first and all(stamp is not None and stamp < float(t) for _, stamp, _ in first), (t, first)  # started before the engine
    assert all(c for _, _, c in second) and not {p for p, _, _ in first} & {p for p, _, _ in second}, (first, second)
