"""The GPU path, end to end: train and score with --device cuda. Skipped only where torch sees no CUDA device."""
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import run_job, voice_clip

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)")


def test_train_and_score_on_cuda(features, tmp_path):
    import soundfile as sf

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    proc = run_job("train", "--features", features, "--epochs", "2", "--device", "cuda", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("voiceclf").experiment_id])
    devices = [r.data.params["device"] for r in runs if "device" in r.data.params]
    assert devices and set(devices) == {"cuda"}, devices
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for f0 in (110.0, 220.0):
        sf.write(inbox / f"{int(f0)}.wav", voice_clip(2.0, f0=f0), 16000)
    proc = run_job("score", inbox, "--out", tmp_path / "r.csv", "--device", "cuda", env=env)
    assert proc.returncode == 0 and " on cuda" in proc.stderr, proc.stderr[-3000:]
    report = pd.read_csv(tmp_path / "r.csv", keep_default_na=False)
    assert len(report) == 2 and (report["status"] == "ok").all()
    assert ((report["p_male"].astype(float) >= 0) & (report["p_male"].astype(float) <= 1)).all()
