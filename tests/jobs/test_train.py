"""The train job: speaker-disjoint splits, runs in MLflow (SQLite store and a real server), the champion."""
import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import REPO, run_job
from voiceclf import dataset, metrics, shards, splits, tracking
from voiceclf import train as tr
from voiceclf.config import DataError, DeviceError
from voiceclf.model import pick_device
from voiceclf.points import GridPoint


# ----------------------------------------------------------------------------- split
def speaker_table(rng, corpora=("a", "b")) -> pd.DataFrame:
    rows = []
    for c in corpora:
        n_f, n_m = rng.integers(3, 15), rng.integers(3, 40)
        rows += [{"speaker": f"{c}/f{i}", "label": 0, "corpus": c} for i in range(n_f)]
        rows += [{"speaker": f"{c}/m{i}", "label": 1, "corpus": c} for i in range(n_m)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(20))
def test_split_is_speaker_disjoint_and_stratified_by_corpus_and_sex(seed):
    spk = speaker_table(np.random.default_rng(seed))
    split = splits.split_speakers(spk, seed=seed)
    sets = [set(split[s]) for s in splits.SPLITS]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(spk["speaker"])
    for s in splits.SPLITS:  # every corpus × sex is in every split
        assert {(x.split("/")[0], x.split("/")[1][0]) for x in split[s]} == {(c, g) for c in "ab" for g in "fm"}, s
    assert split == splits.split_speakers(spk.sample(frac=1, random_state=seed), seed=seed)  # seeded, order-free


def test_holdout_corpus_is_the_whole_test_set():
    spk = speaker_table(np.random.default_rng(0), corpora=("a", "b", "c"))
    split = splits.split_speakers(spk, holdout_corpus="b")
    assert set(split["test"]) == set(spk.loc[spk["corpus"] == "b", "speaker"])
    assert not any(x.startswith("b/") for x in split["train"] + split["val"])
    with pytest.raises(DataError, match="not in the data"):
        splits.split_speakers(spk, holdout_corpus="nope")


def test_split_refuses_one_sex_and_too_few_speakers():
    one = pd.DataFrame({"speaker": list("abc"), "label": [1, 1, 1], "corpus": "x"})
    with pytest.raises(DataError, match="both sexes"):
        splits.split_speakers(one)
    few = pd.DataFrame({"speaker": list("abcde"), "label": [0, 0, 1, 1, 1], "corpus": "x"})
    with pytest.raises(DataError, match="at least 3"):
        splits.split_speakers(few)


def test_device_auto_falls_back_to_the_cpu():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            pick_device("cuda")


def test_speaker_balanced_accuracy_weighs_speakers_and_sexes_equally():
    # 3 male speakers all right; 1 female speaker with 10 files all wrong, 1 female with 1 file right
    files = pd.DataFrame({
        "file": [f"m{i}" for i in range(3)] + [f"fa{i}" for i in range(10)] + ["fb0"],
        "speaker": ["m0", "m1", "m2"] + ["fa"] * 10 + ["fb"], "corpus": "x",
        "y": [1, 1, 1] + [0] * 10 + [0], "p": [0.9, 0.8, 0.7] + [0.9] * 10 + [0.1]})
    files["correct"] = (files["p"] >= 0.5).astype(int) == files["y"]
    m = metrics.evaluate(files, "val")
    assert m["val_speaker_bacc"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["val_score"] == m["val_speaker_bacc.x"] == m["val_worst_corpus"]
    assert m["val_acc"] == pytest.approx(4 / 14)


# ----------------------------------------------------------------------------- end to end
def check_grid_runs(uri: str, n_points: int, epochs: int) -> str:
    """Parent + children with full histories and artifacts; returns the champion's run id."""
    tracking.connect(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name("voiceclf")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == n_points and all(r.info.status == "FINISHED" for r in children)
    for r in children:
        corpus = r.data.params["corpora"]
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc", "val_score", f"val_speaker_bacc.{corpus}"):
            hist = client.get_metric_history(r.info.run_id, key)
            assert [m.step for m in hist] == list(range(1, epochs + 1)), key
        assert {"test_acc", "test_balanced_acc", "test_speaker_acc", "test_score", f"test_speaker_bacc.{corpus}", "best_epoch"} <= set(r.data.metrics)
        assert 1 <= r.data.metrics["best_epoch"] <= epochs
        assert {"lr", "epochs", "gamma", "batch_size", "feature_noise", "family", "seed", "data_fingerprint", "feature.n_mfcc", "feature.feature_set"} <= set(r.data.params)
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"curves.png", "confusion_matrix.png", "split.json", "per_speaker.csv"} <= arts
        split = client.download_artifacts(r.info.run_id, "split.json")
        import json

        sp = json.load(open(split))
        assert not set(sp["train"]) & set(sp["test"])
    mv = client.get_model_version_by_alias("voiceclf", "champion")
    assert mv.tags["run_id"] in {r.info.run_id for r in children}
    assert "feature_config" in mv.tags
    return mv.tags["run_id"]


SYSTEM_METRICS = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes", "system/system_memory_usage_percentage")


def system_metrics_of(client: MlflowClient, run) -> dict[str, list]:
    return {k: client.get_metric_history(run.info.run_id, k) for k in SYSTEM_METRICS if k in run.data.metrics}


def check_system_metrics(uri: str, per_point: bool) -> None:
    """The parent carries MLflow system metrics; the grid points too when they trained one at a time."""
    tracking.connect(uri)
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("voiceclf").experiment_id])
    for r in runs:
        is_point = "mlflow.parentRunId" in r.data.tags
        found = system_metrics_of(client, r)
        if is_point and not per_point:
            assert not found and r.data.tags["voiceclf.system_metrics"].startswith("parent run"), r.info.run_name
            continue
        assert set(found) == set(SYSTEM_METRICS), (r.info.run_name, sorted(r.data.metrics))
        for key, hist in found.items():
            assert [m.step for m in hist] == list(range(len(hist))) and hist, key
            assert all(0 <= m.value for m in hist), key
        assert all(0 <= m.value <= 100 for m in found["system/cpu_utilization_percentage"])
        assert all(m.value > 0 for m in found["system/system_memory_usage_megabytes"])
        if is_point:
            assert r.data.tags["voiceclf.system_metrics"] == "this run"


def test_train_end_to_end_sqlite(features, tmp_path):
    """Points train in parallel worker processes; only the parent process writes to SQLite (system metrics included)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_job("train", "--features", features, "--lr", "1e-3,3e-4", "--epochs", "2", env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "locked" not in proc.stderr and "system metrics" not in proc.stderr.lower(), proc.stderr[-3000:]
    check_grid_runs(uri, n_points=2, epochs=2)
    check_system_metrics(uri, per_point=False)
    assert (tmp_path / "artifacts").is_dir()  # artifacts live beside the database, whatever the cwd


def test_points_trained_one_at_a_time_carry_their_own_system_metrics(champion):
    """The champion fixture trains with --jobs 1: each grid point has the machine to itself."""
    check_system_metrics(champion, per_point=True)


def test_a_run_shorter_than_the_sampling_interval_still_gets_system_metrics(champion):
    tracking.connect(champion)
    runs = tracking.GridRuns.start("system-metrics-check", "short", {}, system_metrics=True)
    assert tracking.SYSTEM_METRICS_INTERVAL_S >= 1
    runs.finish(runs.parent_id)  # well inside the first interval: the partial interval is logged
    client = MlflowClient()
    found = system_metrics_of(client, client.get_run(runs.parent_id))
    assert set(found) == set(SYSTEM_METRICS) and all(len(h) == 1 and h[0].step == 0 for h in found.values())
    assert client.get_run(runs.parent_id).info.status == "FINISHED"


def test_registered_model_round_trips_predictions(features, tmp_path):
    """models:/voiceclf@champion loads back (pt2, no pickled code) to the same predictions as the trained module."""
    from voiceclf.model import GenderCNN

    rows, x, cfg = shards.read(features)
    data = dataset.Data.from_shards(rows, x, cfg)
    split = splits.split_speakers(data.speakers())
    res = tr.train_point(GridPoint(epochs=1), data, split)
    assert res.error is None, res.error
    model = res.model
    assert isinstance(model, GenderCNN)
    tracking.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = tracking.GridRuns.start("voiceclf", "round-trip", {"seed": 0})
    run_id = runs.child("point", {})
    uri = runs.log_point(run_id, res.history, res.test, artifacts={}, model=model, cfg=cfg, input_example=np.array(x[:2]))
    tracking.register_champion(uri, run_id, res.test, cfg)
    loaded = tracking.load("models:/voiceclf@champion")
    assert loaded.cfg == cfg and loaded.version == "1"
    # score's module is rebuilt from voiceclf.model and the logged state dict; the pt2 beside it, what MLflow
    # loads, computes the same
    assert type(loaded.module) is GenderCNN and not loaded.module.training
    import mlflow.pytorch

    pt2 = mlflow.pytorch.load_model("models:/voiceclf@champion")
    assert type(pt2) is not GenderCNN
    with torch.no_grad():
        batch = torch.from_numpy(np.array(x[:50]))
        np.testing.assert_allclose(loaded.module(batch).numpy(), model(batch).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pt2(batch).numpy(), loaded.module(batch).numpy(), rtol=1e-5, atol=1e-5)


def test_champion_is_accurate_on_held_out_synthetic_speakers(champion):
    tracking.connect(champion)
    mv = MlflowClient().get_model_version_by_alias("voiceclf", "champion")
    assert float(mv.tags["test_balanced_acc"]) >= 0.95


def test_a_crashing_grid_point_is_marked_failed_and_the_others_finish(features, tmp_path, monkeypatch):
    """Fault injection: one grid point's training raises; its child run is FAILED, the other is registered."""
    import jobs.train as job

    original = tr.train_point

    def flaky(point, *a, **kw):
        if point.lr == 3e-4:
            point = dataclasses.replace(point, batch_size=0)  # range() step 0 raises inside training
        return original(point, *a, **kw)

    monkeypatch.setattr(tr, "train_point", flaky)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert job.run(job.parse_args(["--features", str(features), "--lr", "1e-3,3e-4", "--epochs", "1", "--jobs", "1"])) == 0
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("voiceclf").experiment_id])
    status = {r.data.params.get("lr"): r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert status == {"0.001": "FINISHED", "0.0003": "FAILED"}
    # the failed point's sampling stopped with it and kept what it measured
    assert all("system/cpu_utilization_percentage" in r.data.metrics for r in runs)
    assert str(client.get_model_version_by_alias("voiceclf", "champion").version) == "1"


# ----------------------------------------------------------------------------- failures
def test_failures_exit_with_one_line(features, tmp_path):
    uri = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "missing": (["--features", tmp_path / "nope"], 2, "does not exist"),
        "empty": (["--features", empty], 2, "no shards"),
        "bad grid": (["--features", features, "--grid", tmp_path / "nope.toml"], 2, "grid file"),
    }
    for name, (args, code, text) in cases.items():
        proc = run_job("train", *args, env=uri)
        assert proc.returncode == code, (name, proc.stderr[-2000:])
        assert text in proc.stderr and "Traceback" not in proc.stderr, name


def test_single_gender_data_is_refused(tmp_path):
    from voiceclf import synth

    src = tmp_path / "src"
    synth.make_corpus(src, speakers=8, clips=2, seed=5)
    import json

    meta = json.loads((src / "audioMNIST_meta.txt").read_text())
    (src / "audioMNIST_meta.txt").write_text(json.dumps({k: {**v, "gender": "male"} for k, v in meta.items()}))
    run_job("featurize", "--variants", "0", src, "--out", tmp_path / "f", "--jobs", "1", check=True)
    proc = run_job("train", "--features", tmp_path / "f", env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"})
    assert proc.returncode == 2 and "both sexes" in proc.stderr


def test_unreachable_tracking_server_fails_fast(features):
    import time

    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.time()
    proc = run_job("train", "--features", features, env={"MLFLOW_TRACKING_URI": url})
    assert proc.returncode == 1 and url in proc.stderr
    assert time.time() - t0 < 30


def test_figures_draw_without_pyplot_and_import_nothing_heavy():
    """voiceclf.figures draws on matplotlib's Figure objects: importing it loads no matplotlib, drawing never
    imports pyplot (which picks a backend for the whole process). In a process of its own, so no other test's
    imports count."""
    import subprocess
    import sys

    code = """
import io, sys
import numpy as np
from voiceclf import figures
print('matplotlib' in sys.modules)
history = [dict(train_loss=1.0 / e, val_loss=1.2 / e, train_acc=0.5 + e / 10, val_balanced_acc=0.5 + e / 12, val_score=0.5 + e / 12,
                val_worst_corpus=0.5 + e / 14) for e in range(1, 4)]
for fig in (figures.curves_figure(history, 'p', best_epoch=2), figures.confusion_figure(np.array([[5, 1], [2, 7]]), 't')):
    buf = io.BytesIO()
    fig.savefig(buf, format='png')
    print(buf.getvalue().startswith(b'\\x89PNG'))
print('matplotlib.pyplot' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True", "False"], out.stdout


@pytest.mark.parametrize("family,hidden", [("cnn", 0), ("embedding_head", 0), ("embedding_head", 32)])
def test_a_module_is_rebuilt_from_its_architecture_and_state_dict(family, hidden, tmp_path):
    """What log_model writes beside the pt2 (safetensors + build arguments) gives back the same network."""
    from voiceclf import safeio
    from voiceclf.config import FeatureConfig
    from voiceclf.model import architecture, build_model, rebuild

    cfg = FeatureConfig.for_feature_set("speaker_embedding" if family == "embedding_head" else "mfcc_pitch")
    torch.manual_seed(0)
    module = build_model(cfg, hidden).eval()
    x = torch.randn(5, *cfg.shape)
    module.fit_standardisation(x)
    safeio.write_safetensors({k: v.numpy() for k, v in module.state_dict().items()}, tmp_path / "w.safetensors")
    again = rebuild(cfg, architecture(module), safeio.read_safetensors((tmp_path / "w.safetensors").read_bytes()))
    assert architecture(again) == {"hidden": hidden} and not again.training
    with torch.no_grad():
        assert torch.equal(again(x), module(x))
    arrays = safeio.read_safetensors((tmp_path / "w.safetensors").read_bytes())
    with pytest.raises(ValueError, match="Missing key"):
        rebuild(cfg, architecture(module), {k: v for k, v in arrays.items() if k != "mean"})
    if family == "embedding_head":
        with pytest.raises(ValueError, match="size mismatch|Missing key|Unexpected key"):
            rebuild(cfg, {"hidden": hidden + 16}, arrays)


def test_a_model_logged_without_a_state_dict_loads_from_its_pt2(tmp_path):
    """Models registered before the state dict was logged beside the pt2 (or logged by hand) still score."""
    import mlflow.pytorch

    from voiceclf.config import FeatureConfig
    from voiceclf.model import GenderCNN

    cfg = FeatureConfig()
    tracking.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = MlflowClient().create_run(tracking.experiment_id()).info.run_id
    torch.manual_seed(1)
    model = GenderCNN().eval()
    x = np.random.default_rng(0).standard_normal((4, *cfg.shape)).astype(np.float32)
    with mlflow.start_run(run_id=run_id):
        uri = mlflow.pytorch.log_model(model, name="model", serialization_format="pt2", input_example=x, pip_requirements=[],
                                       metadata={"feature_config": cfg.to_dict()}).model_uri
    tracking.register_champion(uri, run_id, {}, cfg)
    loaded = tracking.load()
    assert type(loaded.module) is not GenderCNN  # the pt2's graph module
    with torch.no_grad():
        np.testing.assert_allclose(loaded.module(torch.from_numpy(x)).numpy(), model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 32, 98, 12), (4, 64, 49, 6), (2, 3, 7, 5)])
def test_the_cnns_pooling_is_max_pool_2d(shape):
    """model.max_pool2 (strided maxima, ~10x faster on one thread) gives MaxPool2d(2)'s values, and the same gradients
    to the convolution's outputs. (Ties split their gradient where MaxPool2d gives it to one; in the CNN ties are the
    zeros of the ReLU before the pool, whose own gradient there is 0.)"""
    from voiceclf.model import max_pool2

    z = torch.randn(shape, generator=torch.Generator().manual_seed(0)).requires_grad_()
    ref = z.detach().clone().requires_grad_()
    got, want = max_pool2(torch.relu(z)), torch.nn.MaxPool2d(2)(torch.relu(ref))
    assert torch.equal(got, want)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    got.backward(g)
    want.backward(g)
    assert torch.equal(z.grad, ref.grad)


def test_the_cnn_trains_with_torchs_pool_and_scores_with_max_pool2_alike():
    """Training mode pools with MaxPool2d before the ReLU (a training step ~2x faster); the outputs, and the gradients
    of every weight, are those of the scoring path's max_pool2 after the ReLU."""
    from voiceclf.model import GenderCNN

    torch.manual_seed(0)
    model = GenderCNN()
    x = torch.randn(8, 3, 98, 12, generator=torch.Generator().manual_seed(2))
    grads = {}
    for mode in (True, False):
        model.train(mode)
        model.zero_grad()
        out = model(x)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(3)))
        grads[mode] = (out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()})
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=0, atol=0)
    for k, g in grads[False][1].items():
        torch.testing.assert_close(grads[True][1][k], g, rtol=1e-5, atol=1e-7, msg=k)


def test_a_train_job_without_a_terminal_logs_epochs_before_any_training_ends(features, tmp_path):
    """Under cron the log shows training move: each epoch's end in a worker process is a line (issue 22: a CNN training
    took 8 quiet minutes), and the first comes before the first training is done."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_job("train", "--features", features, "--epochs", "3", "--jobs", "2", "--no-register", "--no-system-metrics",
                   env={"MLFLOW_TRACKING_URI": uri, "CI": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    epoch = [i for i, line in enumerate(lines) if re.search(r"train: 0/\d+ trainings.* epoch 1/3 loss [0-9.]+ val_score", line)]
    ended = [i for i, line in enumerate(lines) if re.search(r"train: [1-9]\d*/\d+ trainings", line)]
    assert epoch and ended and epoch[0] < ended[0], "\n".join(lines[-40:])
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d ", lines[epoch[0]])  # timestamped, as cron keeps it
    # the ranked grid as one timestamped record per row (a record is one line), its columns aligned
    table = [line.split(" voiceclf INFO   ", 1)[1] for line in lines if " voiceclf INFO   " in line]
    assert "\\n" not in proc.stderr and len(table) >= 2, "\n".join(lines[-20:])
    header, rows = table[0], table[1:]
    assert "point" in header and "val_score" in header and len({len(r) for r in table}) == 1, table
    assert sum(r.lstrip().startswith("*") for r in rows) == 1, table  # the winner, marked


def test_the_epoch_relay_says_it_is_still_training_when_no_epoch_ends():
    """A log never goes quiet for longer than every_s, even inside one long epoch; notes from a worker process arrive."""
    import time

    from voiceclf import parallel, relay

    said = []
    with relay.epochs_reported(said.append, across_processes=True, every_s=0.5) as notes:
        with parallel.engine("loky"):
            list(parallel.imap(_put_note, [1, 2], n_jobs=2, notes=notes))
        time.sleep(1.6)
    notes_at = [i for i, s in enumerate(said) if not s.startswith("still training")]
    assert sorted(said[i] for i in notes_at) == ["pt epoch 1/2 loss 0.500 val_score 0.750", "pt without b epoch 2/2 loss 0.500 val_score 0.750"], said
    assert any(s.startswith("still training; last: pt") and s.endswith("s ago)") for s in said[notes_at[-1] :]), said


def _put_note(epoch: int, notes) -> None:
    from voiceclf import relay

    relay.put_quietly(notes, relay.epoch_note("pt", None if epoch == 1 else "b", epoch, 2, {"train_loss": 0.5, "val_score": 0.75}))


def test_speaker_windows_caps_an_epoch_and_patience_stops_training(features):
    """speaker_windows: an epoch draws that many windows per training speaker (never more than there are);
    patience: training stops once that many epochs in a row did not beat the kept one."""

    data, _ = dataset.load_data([features])
    d = data["mfcc_pitch"]
    n_spk = len(np.unique(d.speaker))
    point = GridPoint(epochs=12, patience=2, speaker_windows=4)
    assert tr.windows_per_epoch(d, point) == 4 * n_spk < len(d.y)
    assert tr.windows_per_epoch(d, dataclasses.replace(point, speaker_windows=10**6)) == tr.windows_per_epoch(d, GridPoint()) == len(d.y)
    assert "spk_win=4 patience=2" in point.name and "spk_win" not in GridPoint().name  # old names unchanged
    split = splits.split_speakers(dataset.all_speakers(data), seed=0)
    res = tr.train_point(dataclasses.replace(point, lr=3e-2), d, split, seed=0, threads=1)  # a high rate: val_score stalls early
    assert res.error is None, res.error
    assert len(res.history) == 12 or len(res.history) == res.best_epoch + 2, (len(res.history), res.best_epoch)
    assert len(res.history) < 12, "expected an early stop on synthetic speakers"
