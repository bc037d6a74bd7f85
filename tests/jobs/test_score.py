"""The score job: one row per file whatever the input, accuracy on unseen speakers, clear failures."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from conftest import REPO, held, plant_bad_files, run_job
from voiceclf import pipeline, synth, tracking
from voiceclf.score import REPORT_COLUMNS, SEGMENT_COLUMNS


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Unseen synthetic speakers plus everything a real inbox holds; returns (folder, path → expected)."""
    root = tmp_path_factory.mktemp("recordings")
    df = synth.make_corpus(root, speakers=8, clips=6, seed=11, first_speaker=71)
    (root / "audioMNIST_meta.txt").unlink()
    expected = {str(root / p): ("ok", lab) for p, lab in zip(df["path"], df["label"])}
    bad = root / "inbox"
    for name, code in plant_bad_files(bad).items():
        expected[str(bad / name)] = ("no_speech" if code == "no_speech" else "error", code)
    rng = np.random.default_rng(5)
    long = synth.synth_recording("female", rng, duration_s=30.0)
    sf.write(root / "inbox" / "meeting_30s.wav", long, 16000, subtype="PCM_16")
    expected[str(root / "inbox" / "meeting_30s.wav")] = ("ok", "female")
    male = synth.synth_recording("male", np.random.default_rng(6), duration_s=3.0)
    stereo48k = np.stack([male, 0.8 * male], axis=1)
    import librosa

    stereo48k = librosa.resample(stereo48k.T, orig_sr=16000, target_sr=48000).T
    sf.write(root / "inbox" / "phone call.flac", stereo48k, 48000, format="FLAC")
    expected[str(root / "inbox" / "phone call.flac")] = ("ok", "male")
    (root / "inbox" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    expected[str(root / "inbox" / ".DS_Store")] = ("error", "hidden")
    return root, expected


def test_score_end_to_end(champion, recordings, tmp_path):
    root, expected = recordings
    out, seg = tmp_path / "report.csv", tmp_path / "segments.csv"
    proc = run_job("score", root, "--out", out, "--segments", seg, env={"MLFLOW_TRACKING_URI": champion})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"on {'cuda' if torch.cuda.is_available() else 'cpu'}" in proc.stderr  # --device auto (the default)
    report = pd.read_csv(out, keep_default_na=False)
    assert list(report.columns) == REPORT_COLUMNS
    assert sorted(report["path"]) == list(report["path"]) == sorted(expected)  # one row per file, sorted
    by_path = report.set_index("path")
    for path, (status, what) in expected.items():
        row = by_path.loc[path]
        assert row["status"] == status, (path, row.to_dict())
        if status == "error":
            assert row["error"].startswith(what), (path, row["error"])
    assert (report["model_uri"] == "models:/voiceclf@champion").all() and (report["model_version"].astype(str) == "1").all()
    ok = report[report["status"] == "ok"]
    truth = ok["path"].map(lambda p: expected[p][1])
    assert (ok["label"] == truth).mean() >= 0.9
    p = ok["p_male"].astype(float)
    assert ((p >= 0) & (p <= 1)).all() and np.allclose(ok["confidence"].astype(float), np.maximum(p, 1 - p), atol=1e-6)
    long = by_path.loc[str(root / "inbox" / "meeting_30s.wav")]
    assert int(long["windows"]) >= 20 and abs(float(long["duration_s"]) - 30.0) < 0.1
    assert abs(float(by_path.loc[str(root / "inbox" / "phone call.flac")]["duration_s"]) - 3.0) < 0.05
    # --segments: speech turns, not windows: every ok file has some, consecutive and non-overlapping, at least as long
    # as the speech they hold, and the seconds per sex add up to the file's speech
    segments = pd.read_csv(seg)
    assert list(segments.columns) == SEGMENT_COLUMNS
    assert set(segments["path"]) == set(ok["path"])
    for path, g in segments.groupby("path"):
        row = by_path.loc[path]
        assert (g["end_s"].values[:-1] <= g["start_s"].values[1:]).all() and (g["end_s"] > g["start_s"]).all()
        assert (g["end_s"] - g["start_s"]).sum() >= float(row["female_s"]) + float(row["male_s"]) - 1e-3
        assert 0 < float(row["female_s"]) + float(row["male_s"]) <= float(row["duration_s"]) + 1e-3
        if row["label"] != "mixed":  # one voice: most of its speech carries the file's sex (unless the file is a close call)
            assert (float(row["female_share"]) >= 0.5) == (row["label"] == "female") or abs(float(row["p_male"]) - 0.5) < 0.2, row.to_dict()
    assert (report.loc[report["status"] != "ok", ["female_s", "male_s"]] == "").all().all()


def test_device_cpu_scores_and_cuda_without_a_gpu_is_a_usage_error(champion, recordings, tmp_path):
    root, expected = recordings
    inbox = root / "inbox"
    env = {"MLFLOW_TRACKING_URI": champion}
    proc = run_job("score", inbox, "--out", tmp_path / "cpu.csv", "--device", "cpu", "--jobs", "1", env=env)
    assert proc.returncode == 0 and " on cpu" in proc.stderr, proc.stderr[-3000:]
    report = pd.read_csv(tmp_path / "cpu.csv", keep_default_na=False).set_index("path")
    assert {p: report.loc[p, "status"] for p in report.index} == {p: e[0] for p, e in expected.items() if p.startswith(str(inbox))}
    assert report.loc[str(inbox / "phone call.flac"), "label"] == "male"
    if torch.cuda.is_available():
        return
    proc = run_job("score", inbox, "--out", tmp_path / "cuda.csv", "--device", "cuda", env=env)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "device cuda: torch sees no CUDA device" in lines[0], proc.stderr
    assert not (tmp_path / "cuda.csv").exists()


def test_the_registered_model_runs_on_another_device(champion):
    """The pt2 graph holds no CPU-bound op: moved to the meta device (a stand-in for CUDA here) it still runs."""
    from voiceclf import tracking
    from voiceclf.model import device_of

    tracking.connect(champion)
    model = tracking.load()
    module = model.module.to("meta")
    assert device_of(module).type == "meta"
    out = module(torch.zeros(4, *model.cfg.shape, device="meta"))
    assert out.shape == (4, 2) and out.device.type == "meta"


def test_no_champion_gives_the_documented_error(recordings, tmp_path):
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    proc = run_job("score", recordings[0], "--out", tmp_path / "r.csv", env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 1
    assert f"no model registered as voiceclf@champion in {uri}" in proc.stderr and "make train" in proc.stderr
    assert not (tmp_path / "r.csv").exists()
    # the library says what is missing; the next step (a make target) is the job's to add
    with pytest.raises(tracking.NoChampion) as e:
        pipeline.score_dirs([recordings[0]], tracking_uri=uri)
    assert e.value.missing == "model" and "make" not in str(e.value) and str(e.value) in proc.stderr


def test_bad_invocations_exit_2(champion, recordings, tmp_path):
    env = {"MLFLOW_TRACKING_URI": champion}
    missing = run_job("score", tmp_path / "nope", "--out", tmp_path / "r.csv", env=env)
    assert missing.returncode == 2 and "no such directory" in missing.stderr
    unwritable = run_job("score", recordings[0], "--out", tmp_path / "no" / "dir" / "r.csv", env=env)
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr


def test_interrupted_run_leaves_no_partial_report(champion, tmp_path):
    """SIGTERM mid-batch: exit 130, no report and no temp file left; a rerun completes."""
    src = tmp_path / "many"
    synth.make_corpus(src, speakers=4, clips=2, seed=2)
    long = synth.synth_recording("male", np.random.default_rng(1), duration_s=60.0)
    for i in range(12):
        sf.write(src / f"long_{i:02d}.wav", long, 16000, subtype="PCM_16")
    out = tmp_path / "report.csv"
    env = {**os.environ, "MLFLOW_TRACKING_URI": champion}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.score", str(src), "--out", str(out), "--jobs", "1"], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True)
    for line in proc.stderr:  # wait until scoring is under way
        if "files to do" in line:
            break
    time.sleep(0.3)
    with held(proc):
        proc.send_signal(signal.SIGTERM)  # delivered when it continues
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert "interrupted" in rest
    assert not out.exists() and not list(tmp_path.glob(".report.csv.*.tmp"))
    done = run_job("score", src, "--out", out, env={"MLFLOW_TRACKING_URI": champion})
    assert done.returncode == 0 and len(pd.read_csv(out)) == len(list(src.rglob("*.*")))


def test_score_featurizes_on_the_version_tags_while_the_model_loads_and_refuses_a_mismatch(features, tmp_path):
    """The workers start on the FeatureConfig in the version's tags; the loaded model must carry the same one."""
    import dataclasses

    from mlflow.tracking import MlflowClient

    from jobs.train import DEFAULT_GRID
    from voiceclf import pipeline
    from voiceclf.config import FeatureConfig

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    pipeline.train_grid([features], pipeline.read_grid(DEFAULT_GRID, {"epochs": [1]}), tracking_uri=uri, jobs=1, system_metrics=False)
    rec = tmp_path / "rec"
    synth.make_corpus(rec, speakers=2, clips=2, seed=5, first_speaker=31)
    ok = pipeline.score_dirs([rec], tracking_uri=uri, jobs=1)
    wav = ok.report[ok.report["path"].str.endswith(".wav")]
    assert len(wav) == 4 and (wav["status"] == "ok").all() and ok.model_version == "1"
    assert (ok.report["model_uri"] == "models:/voiceclf@champion").all()
    other = dataclasses.replace(FeatureConfig(), top_db=30.0)
    MlflowClient().set_model_version_tag("voiceclf", "1", "feature_config", other.to_json())
    with pytest.raises(pipeline.ModelError, match="another feature config than its tags say"):
        pipeline.score_dirs([rec], tracking_uri=uri, jobs=1)


def test_relative_folders_reach_workers_started_in_another_folder(champion, corpus, tmp_path, monkeypatch):
    """loky reuses its workers across calls; a program that changed folder since they started still has its
    relative paths read, and the report keeps them as given."""
    pipeline.score_dirs([corpus / "01"], tracking_uri=champion, jobs=2)  # workers start in this folder
    monkeypatch.chdir(corpus)
    report = pipeline.score_dirs(["02"], tracking_uri=champion, jobs=2).report
    assert len(report) == len(list((corpus / "02").glob("*.wav"))) > 0
    assert report["path"].str.startswith("02/").all() and (report["status"] == "ok").all(), report[["path", "status", "error"]]


def test_the_score_job_imports_neither_torch_nor_sklearn_nor_matplotlib_before_its_workers_start():
    """torch (~1.7 s), sklearn (~0.8 s) and matplotlib (~0.5 s) are not on score's path to its first worker:
    importing the job brings in none of them (score_dirs imports torch once the workers have their batches)."""
    import subprocess
    import sys

    code = "import sys, jobs.score; print(sorted(m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_p_male_does_not_depend_on_the_batch_size():
    """Windows are scored in batches of 128 (faster on one thread than 512): every window gets the same bits either way
    (torch's CPU kernels; a batch of a single window may differ in the last bit, as torch takes another path for it)."""
    import torch

    from voiceclf.model import GenderCNN, p_male

    torch.manual_seed(0)
    model = GenderCNN().eval()
    x = np.random.default_rng(0).standard_normal((700, 3, 98, 12)).astype(np.float32)
    want = p_male(model, x, batch_size=512)
    for size in (64, 128, 300):
        np.testing.assert_array_equal(p_male(model, x, batch_size=size), want)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_refused_device_leaves_no_model_loading_behind(champion, recordings):
    """score_dirs loads the model in a thread while it checks the device: a refusal waits for that thread, so it
    never outlives the call (torch.export loads one model at a time per process)."""
    import threading

    from voiceclf.config import DeviceError

    with pytest.raises(DeviceError, match="no CUDA device"):
        pipeline.score_dirs([recordings[0]], tracking_uri=champion, device="cuda")
    assert not [t.name for t in threading.enumerate() if t.name.startswith("voiceclf-model-load")]
    tracking.connect(champion)
    assert tracking.load().version
