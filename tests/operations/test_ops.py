"""Operations: a real tracking server end to end, a real Dask cluster, locks, signals, the compute arguments."""
import importlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from mlflow.tracking import MlflowClient

from conftest import REPO, held, run_job
from voiceclf import shards, synth, tracking


def start(job: str, *args, env: dict | None = None) -> subprocess.Popen:
    """``python -m jobs.<job>`` in a process group of its own (see conftest.held)."""
    return subprocess.Popen([sys.executable, "-m", f"jobs.{job}", *map(str, args)], cwd=REPO, env={**os.environ, **(env or {})},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(proc: subprocess.Popen, text: str) -> None:
    for line in proc.stderr:
        if text in line:
            return
    raise AssertionError(f"process ended before printing {text!r}")


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    """Few speakers with long recordings (40 files of 45 s): a run lasts seconds, so a test sees it mid-run before
    holding it (:func:`held`); the tests no longer count on featurize being slow."""
    root = tmp_path_factory.mktemp("long")
    synth.make_corpus(root, speakers=4, clips=2, seed=4)
    for spk in ("01", "02", "03", "04"):
        gender = synth.speaker_gender(int(spk))
        y = synth.synth_recording(gender, np.random.default_rng(int(spk)), duration_s=45.0)
        for i in range(10):
            sf.write(root / spk / f"9_{spk}_{i + 10}.wav", np.roll(y, i * 8000), 16000, subtype="PCM_16")
    return root


# ----------------------------------------------------------------------------- locks and signals
def test_overlapping_runs_on_one_output_exit_3_or_wait(long_corpus, tmp_path):
    out = tmp_path / "out"
    first = start("featurize", "--variants", "0", long_corpus, "--out", out, "--jobs", "1")
    wait_for(first, "to do")  # it holds the lock
    with held(first):
        second = run_job("featurize", "--variants", "0", long_corpus, "--out", out, "--jobs", "1")
        assert second.returncode == 3 and "locked" in second.stderr
        waiting = start("featurize", "--variants", "0", long_corpus, "--out", out, "--jobs", "1", "--wait")
        wait_for(waiting, f"locked by a running job (pid {first.pid}): waiting for it")
    assert first.wait(timeout=300) == 0
    rest = waiting.stderr.read()
    assert waiting.wait(timeout=120) == 0 and "nothing new" in rest  # it queued, then found the work done


def test_sigterm_during_featurize_keeps_only_whole_shards_and_a_rerun_resumes(long_corpus, tmp_path):
    out = tmp_path / "out"
    proc = start("featurize", "--variants", "0", long_corpus, "--out", out, "--jobs", "1", "--shard-rows", "30")
    deadline = time.time() + 120
    while not shards.part_paths(out) and time.time() < deadline:  # interrupt after the first shard
        time.sleep(0.02)
    with held(proc):
        proc.send_signal(signal.SIGTERM)  # delivered when it continues
    assert proc.wait(timeout=60) == 130
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    partial = shards.read(out, with_features=False)[0]
    total = len(list(long_corpus.rglob("*.wav")))
    assert 0 < partial["path"].nunique() < total
    resumed = run_job("featurize", "--variants", "0", long_corpus, "--out", out, "--jobs", "1", "--shard-rows", "30", check=True)
    assert f"{partial['path'].nunique()} already in" in resumed.stderr
    rows = shards.read(out, with_features=False)[0]
    assert rows["path"].nunique() == total and not rows.duplicated(["path", "window"]).any()


# ----------------------------------------------------------------------------- tracking server
def test_featurize_train_score_against_a_tracking_server(features, corpus, mlflow_server, tmp_path):
    """The whole flow with MLFLOW_TRACKING_URI=http://…: runs, artifacts served by the server, champion, report."""
    from test_train import check_grid_runs, check_system_metrics

    env = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    run_job("train", "--features", features, "--lr", "1e-3,3e-4", "--epochs", "3", env=env, check=True)
    check_grid_runs(mlflow_server.url, n_points=2, epochs=3)
    check_system_metrics(mlflow_server.url, per_point=False)  # logged over HTTP by the parent's sampling thread
    out = tmp_path / "report.csv"
    run_job("score", corpus / "02", "--out", out, env=env, check=True)
    report = pd.read_csv(out)
    assert (report["status"] == "ok").all() and (report["label"] == "male").mean() >= 0.9  # speaker 02 is male
    tracking.connect(mlflow_server.url)
    mv = MlflowClient().get_model_version_by_alias("voiceclf", "champion")
    assert str(mv.version) == str(report["model_version"].iloc[0])


def test_a_server_that_dies_mid_run_fails_clearly_and_a_rerun_completes(features, mlflow_server, tmp_path):
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    # no retries: the job's own default (3, ~15 s) is the same failure, later
    proc = start("train", "--features", features, "--lr", "1e-3", "--epochs", "6", "--jobs", "1", env={**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    wait_for(proc, "trainings to do")
    with held(proc):  # the server dies while the job is mid-run, however fast training gets
        os.killpg(mlflow_server.proc.pid, signal.SIGKILL)
        mlflow_server.proc.wait()
    err = proc.stderr.read()
    assert proc.wait(timeout=180) == 1, err
    assert mlflow_server.url in err and "Traceback" not in err
    # the server comes back on the same port and database: the rerun completes and registers a champion
    server = subprocess.Popen(mlflow_server.proc.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=mlflow_server.env)
    mlflow_server.proc = server
    deadline = time.time() + 120
    while True:
        try:
            tracking.connect(mlflow_server.url)
            break
        except tracking.TrackingError:
            assert time.time() < deadline
            time.sleep(0.5)
    run_job("train", "--features", features, "--lr", "1e-3", "--epochs", "1", "--jobs", "1", env=env, check=True)
    assert MlflowClient().get_model_version_by_alias("voiceclf", "champion") is not None


# ----------------------------------------------------------------------------- Dask
@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")  # the 'dask' extra; make setup installs it
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)
    yield cluster.scheduler_address
    cluster.close()


def test_dask_backend_gives_the_same_shards_and_report_as_loky(dask_cluster, corpus, features, champion, tmp_path):
    out = tmp_path / "dask-features"
    run_job("featurize", "--variants", "0", corpus, "--out", out, "--backend", "dask", "--scheduler", dask_cluster, check=True)
    local, remote = pq.read_table(shards.part_paths(features)), pq.read_table(shards.part_paths(out))
    assert local.schema == remote.schema
    for name in local.column_names:
        assert local.column(name).equals(remote.column(name)), name
    assert (out / "errors.csv").read_text() == (features / "errors.csv").read_text()

    env = {"MLFLOW_TRACKING_URI": champion}
    run_job("score", corpus / "05", "--out", tmp_path / "loky.csv", env=env, check=True)
    run_job("score", corpus / "05", "--out", tmp_path / "dask.csv", "--backend", "dask", "--scheduler", dask_cluster, env=env, check=True)
    assert (tmp_path / "loky.csv").read_text() == (tmp_path / "dask.csv").read_text()


def test_dask_backend_trains_the_grid_like_loky(dask_cluster, features, tmp_path):
    metrics = {}
    for backend in ("loky", "dask"):
        uri = f"sqlite:///{tmp_path / backend}.db"
        extra = ["--scheduler", dask_cluster] if backend == "dask" else []
        run_job("train", "--features", features, "--lr", "1e-3,3e-4", "--epochs", "1", "--jobs", "2", "--no-register", "--backend", backend, *extra,
                env={"MLFLOW_TRACKING_URI": uri}, check=True)
        tracking.connect(uri)
        client = MlflowClient()
        runs = client.search_runs([client.get_experiment_by_name("voiceclf").experiment_id])
        metrics[backend] = sorted((r.data.params["lr"], r.data.metrics["val_loss"]) for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert len(metrics["loky"]) == 2 and metrics["loky"] == metrics["dask"]


def test_library_errors_map_to_the_readme_exit_codes_through_one_table(capsys):
    """Every job ends through _cli.main_wrapper's one table: a held lock is 3 in each (demo said 1), bad inputs 2,
    an unusable model or store 1, and what is not a library error stays an internal error (1)."""
    from jobs import _cli
    from voiceclf import parallel, pipeline, report_files, safeio

    def exit_code(job: str, error: Exception) -> int:
        def run():
            raise error

        with pytest.raises(SystemExit) as ended:
            _cli.main_wrapper(job, run)
        return ended.value.code

    cases = [(safeio.LockedError(Path("out"), "123"), _cli.LOCKED), (pipeline.GridError("bad grid"), _cli.USAGE),
             (pipeline.OutputError("not writable"), _cli.USAGE), (pipeline.ModelError("cannot run"), _cli.FAILURE),
             (pipeline.TrainError("every grid point failed"), _cli.FAILURE), (tracking.TrackingError("no such model"), _cli.FAILURE),
             (parallel.EngineError("backend dask needs a scheduler address"), _cli.USAGE),
             (report_files.ReportNotWritten("cannot write r.csv: No space left on device; kept in /tmp/x.csv"), _cli.FAILURE)]
    for job in ("featurize", "train", "score", "demo"):
        for error, code in cases:
            assert exit_code(job, error) == code, (job, error)
            assert f"voiceclf {job}: error:" in capsys.readouterr().err
    assert "rerun with --wait" in (capsys.readouterr(), exit_code("demo", safeio.LockedError(Path("out"), "123")), capsys.readouterr().err)[2]
    assert exit_code("score", KeyError("bug")) == _cli.FAILURE and "internal error" in capsys.readouterr().err


# ----------------------------------------------------------------------------- compute arguments
def test_the_library_checks_jobs_backend_and_scheduler_as_scikit_learn_checks_params():
    from voiceclf import parallel

    for ok in ({}, {"jobs": 1}, {"jobs": 8, "backend": "threading"}, {"backend": "dask", "scheduler": "tcp://h:8786"}):
        parallel.check(**ok)
    for bad, said in (({"jobs": 0}, "jobs must be -1 (all cores) or >= 1, got 0"), ({"jobs": -2}, "got -2"), ({"jobs": True}, "got True"),
                      ({"jobs": 2.0}, "got 2.0"), ({"backend": "spark"}, "backend must be one of loky, threading, dask, got 'spark'"),
                      ({"backend": "dask"}, "backend dask needs a scheduler address")):
        with pytest.raises(parallel.EngineError, match=re.escape(said)):
            parallel.check(**bad)
    with pytest.raises(parallel.EngineError, match="jobs must be"):  # its own entry points check too: a library caller gets the same
        parallel.imap(abs, [1], n_jobs=0)


@pytest.mark.parametrize("job", ["featurize", "train", "score", "demo"])
def test_every_job_takes_the_same_compute_arguments_and_refuses_bad_ones_in_one_line_before_any_work(job, tmp_path):
    from jobs import _cli

    module = importlib.import_module(f"jobs.{job}")
    first = {"featurize": [tmp_path / "nothing", "--out", tmp_path / "f"], "train": ["--features", tmp_path / "nothing"],
             "score": [tmp_path / "nothing", "--out", tmp_path / "r.csv"], "demo": ["--workdir", tmp_path / "demo"]}[job]
    args = module.parse_args([*map(str, first), "--jobs", "3"])
    assert _cli.compute(args)["jobs"] == 3
    cases = [(["--jobs", "0"], "--jobs must be -1 (all cores) or >= 1, got 0")]
    if job != "demo":  # the demo runs on this machine's cores only
        cases.append((["--backend", "dask"], "--backend dask needs a scheduler address (e.g. tcp://host:8786)"))
    for extra, said in cases:
        out = run_job(job, *first, *extra)
        assert (out.returncode, out.stderr.strip()) == (_cli.USAGE, f"voiceclf {job}: error: {said}")
    assert not (tmp_path / "f").exists() and not (tmp_path / "demo").exists()  # nothing was made before the refusal


def test_score_takes_its_reports_lock_in_the_library_as_featurize_does(tmp_path):
    """Another process holding the report (report_files.reserved, as a running score does): the job exits 3 before any work."""
    out = tmp_path / "report.csv"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom voiceclf import report_files\n"
                               f"with report_files.reserved({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = run_job("score", tmp_path / "no-such-inbox", "--out", out)
        assert second.returncode == 3 and f"locked by a running job (pid {holder.pid})" in second.stderr and "--wait" in second.stderr, second.stderr
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()
