"""Shared fixtures: a small synthetic corpus, its features, and a temporary SQLite tracking store.

Everything is generated here: tests never need ../shared (a user's clone does not have it). Tests are grouped by layer:

- ``library/``: one file per library module (``test_<module>.py``), through its functions; a few also run a job to
  see the module's effect where users see it (a calibration map in the report, turns in a segments file);
- ``jobs/``: each job's contract end to end, as its command line and the MLflow store show it;
- ``operations/``: how it runs in the world: tracking servers, Dask clusters, cron and Airflow, signals and locks,
  GPUs, hostile files, links, disks and registries, and the benchmark's own checks.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def one_line_failure(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    """The job exited ``code`` with a one-line error and no traceback; returns that line."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def register(uri: str, pickled=None) -> str:
    """Log a model and make it voiceclf@champion in the store at ``uri``; returns its artifact folder. The model is a
    genuine pt2 one (an untrained GenderCNN), or ``pickled`` (a torch module) logged as a pickle, as a hostile
    registry would hold it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from voiceclf import tracking
    from voiceclf.config import FeatureConfig
    from voiceclf.model import GenderCNN

    tracking.connect(uri)
    run_id = MlflowClient().create_run(tracking.experiment_id()).info.run_id
    cfg = FeatureConfig()
    if pickled is None:
        model_uri = tracking.log_model(run_id, GenderCNN(), cfg, np.zeros((2, *cfg.shape), np.float32))
    else:
        with mlflow.start_run(run_id=run_id):
            model_uri = mlflow.pytorch.log_model(pickled, name="model", serialization_format="pickle", pip_requirements=[],
                                                 metadata={"feature_config": cfg.to_dict()}).model_uri
    tracking.register_champion(model_uri, run_id, {}, cfg)
    model_id = model_uri.rsplit("/", 1)[-1]
    (folder,) = Path(uri.removeprefix("sqlite:///")).parent.glob(f"artifacts/**/{model_id}/artifacts")
    return str(folder)


def refused_naming(proc: subprocess.CompletedProcess, name: str) -> str:
    """A job's refusal of its arguments or data: exit 2, no traceback, its last line an error naming ``name``."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert "error:" in last and name in last, last
    return last


def run_job(job: str, *args, env: dict | None = None, timeout: float = 600, check: bool = False, process: bool = False,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``jobs.<job> ARGS`` from ``cwd`` (the repo root) as a user would, with no terminal (plain log lines), and
    return its exit code, stdout and stderr.

    In this process by default: the job's ``main`` with its argv, environment (``env``; None values unset
    a variable) and cwd, its exit code from SystemExit, stdout/stderr captured. That is everything a
    job does but start an interpreter: importing torch and MLflow anew cost ~3 s a call, most of the
    suite's time. ``process=True`` runs ``python -m jobs.<job>`` where the process itself is under test
    (warnings printed by the interpreter, numba's cache at import, umask, signals).
    """
    if process:
        full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
        full_env["PYTHONPATH"] = str(REPO)  # the jobs package, from any cwd
        proc = subprocess.run([sys.executable, "-m", f"jobs.{job}", *map(str, args)], cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    else:
        proc = _run_in_process(job, [str(a) for a in args], env or {}, cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"jobs.{job} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


@contextlib.contextmanager
def held(proc: subprocess.Popen):
    """A job started with ``start_new_session=True``, stopped (SIGSTOP) with its workers for the block and
    continued after it: what a test does to a running job meanwhile (a second run, a signal) cannot race with
    the job's own end, however fast the job gets. A signal sent in the block is delivered when it continues."""
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        assert proc.poll() is None, "the job ended before it could be held: give it more work"
        yield
    finally:
        os.killpg(proc.pid, signal.SIGCONT)


def _run_in_process(job: str, argv: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """A job's main in this process; the environment, logging, SIGTERM handler and cwd it changes are put back."""
    import importlib
    import io
    import logging
    from unittest import mock

    from jobs import _cli

    module = importlib.import_module(f"jobs.{job}")
    root = logging.getLogger()
    handlers, levels = root.handlers[:], {name: logging.getLogger(name).level for name in ["", *logging.root.manager.loggerDict]}
    sigterm = signal.getsignal(signal.SIGTERM)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        # patch.dict restores the whole environment, the jobs' own defaults (MLflow's HTTP retries) included
        with mock.patch.dict(os.environ), contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = str(v)
            try:
                module.main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        root.handlers[:] = handlers
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        signal.signal(signal.SIGTERM, sigterm)
        _cli._terminated = None
    return subprocess.CompletedProcess(["jobs." + job, *argv], code, out.getvalue(), err.getvalue())


def voice_clip(seconds: float = 0.6, sr: int = 16000, f0: float = 140.0) -> np.ndarray:
    """A short synthetic utterance at median pitch ``f0``: audio the speech gate takes for a voice (a pure
    tone is not: Silero VAD calls it no_speech)."""
    from voiceclf import synth

    gender = "male" if f0 < 165 else "female"
    y = synth.synth_utterance(gender, np.random.default_rng(int(f0 * 10)), speaker_f0=f0, duration_s=seconds, sample_rate=sr)
    return (0.5 * y / np.max(np.abs(y))).astype(np.float32)


def plant_bad_files(folder: Path) -> dict[str, str]:
    """Bad inputs a batch meets in real life; returns relative path → expected error code."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.wav").write_text("this is a text file with a .wav name\n")
    good = folder / "_tmp.wav"
    sf.write(good, voice_clip(), 16000, subtype="PCM_16")
    raw = good.read_bytes()
    good.unlink()
    (folder / "corrupt.wav").write_bytes(raw[:12] + b"fmt " + b"\xff" * 40)
    sf.write(folder / "silent.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    return {"empty.wav": "empty", "notes.wav": "not_audio", "corrupt.wav": "corrupt", "silent.wav": "no_speech"}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """24 synthetic speakers (12 female, 12 male) × 16 clips in AudioMNIST layout, plus bad files in one speaker folder."""
    from voiceclf import synth

    root = tmp_path_factory.mktemp("corpus")
    synth.make_corpus(root, speakers=24, clips=16, seed=0)
    plant_bad_files(root / "01")
    return root


@pytest.fixture(scope="session")
def features(corpus, tmp_path_factory) -> Path:
    from voiceclf import pipeline

    out = tmp_path_factory.mktemp("features")
    pipeline.featurize_dir([corpus], out, jobs=2)  # in-process: the job's own process is tested in test_featurize
    return out


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> str:
    """A fresh embedded-style SQLite tracking store for the session."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def champion(features, store) -> str:
    """A champion trained on the synthetic corpus (1 grid point, 8 epochs) in the session's store, in-process
    (the train job's own process is tested in test_train)."""
    from jobs.train import DEFAULT_GRID
    from voiceclf import pipeline

    grids = pipeline.read_grid(DEFAULT_GRID, {"lr": [1e-3], "epochs": [8]})
    pipeline.train_grid([features], grids, tracking_uri=store, jobs=1)
    return store


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free loopback port (SQLite backend, served artifacts); stopped afterwards."""
    import time
    import urllib.request

    port = free_port()
    # The server's job runner (7 huey consumers) serves features this project does not use: off, for a faster start.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"), start_new_session=True, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    server = type("Server", (), {"url": url, "proc": proc, "port": port, "env": env})
    yield server
    proc = server.proc  # a test may have restarted it
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
