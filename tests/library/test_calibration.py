"""Calibrated confidence (issue 18): the map a model carries is applied in score, confidence is the
probability of the reported label, ``--min-confidence`` labels ``uncertain``."""
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import run_job
from voiceclf import calibration, shards, synth, tracking
from voiceclf import train as tr
from voiceclf.calibration import Calibration, decide
from voiceclf.dataset import Data
from voiceclf.points import GridPoint
from voiceclf.splits import split_speakers


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_decide_reports_the_probability_of_the_label_it_gives():
    # issue 20 item 8: with --threshold 0.999 a p_male of 0.9967 is female, and 0.33 % sure of it
    assert decide(0.9967, threshold=0.999) == ("female", pytest.approx(0.0033))
    assert decide(0.9995, threshold=0.999) == ("male", pytest.approx(0.9995))
    assert decide(0.3, threshold=0.2) == ("male", pytest.approx(0.3))
    assert decide(0.55, min_confidence=0.6) == ("uncertain", pytest.approx(0.55))
    assert decide(0.35, min_confidence=0.6) == ("female", pytest.approx(0.65))


def test_the_default_fit_scales_the_logit_and_never_moves_the_decision():
    rng = np.random.default_rng(1)
    n = 20000
    z = rng.normal(0, 3, n)
    y = (rng.random(n) < sigmoid(0.4 * z + 0.8)).astype(int)
    files = pd.DataFrame({"p": sigmoid(z), "y": y, "corpus": "c", "speaker": np.arange(n).astype(str)})
    cal = calibration.fit(files)
    assert cal.b == 0.0 and cal.a == pytest.approx(0.4, abs=0.05)
    assert np.array_equal(cal.apply(files["p"].to_numpy()) >= 0.5, files["p"].to_numpy() >= 0.5)


def test_platt_fit_recovers_a_known_map_and_lowers_the_ece():
    rng = np.random.default_rng(0)
    n = 20000
    z = rng.normal(0, 3, n)  # the raw logit: overconfident by 2, biased towards male by 0.5
    y = (rng.random(n) < sigmoid(0.5 * z - 0.5)).astype(int)
    files = pd.DataFrame({"p": sigmoid(z), "y": y, "corpus": "c", "speaker": np.arange(n).astype(str)})
    cal = calibration.fit(files, intercept=True)
    # the sexes weigh the same in the fit (a user's share of women is unknown): the intercept is the true one
    # plus the log of the sexes' ratio in the data, the prior a balanced sample would have
    n1 = y.sum()
    assert cal.a == pytest.approx(0.5, abs=0.03) and cal.b == pytest.approx(-0.5 + np.log((n - n1) / n1), abs=0.06)
    balanced = files.groupby("y").sample(n=min(n1, n - n1), random_state=0)
    assert calibration.ece(balanced["p"], balanced["y"]) > 0.1 > 0.02 > calibration.ece(cal.apply(balanced["p"].to_numpy()), balanced["y"])
    assert Calibration.from_dict(cal.to_dict()) == cal and Calibration.from_dict(None) == calibration.IDENTITY
    with pytest.raises(ValueError):
        Calibration.from_dict({"method": "platt", "a": -1, "b": 0})


@pytest.fixture(scope="module")
def two_versions(features, tmp_path_factory):
    """The same trained module registered twice in a store of its own: version 1 without a calibration (as
    models logged before it), version 2 carrying a known one."""
    rows, x, cfg = shards.read(features)
    data = Data.from_shards(rows, x, cfg)
    res = tr.train_point(GridPoint(epochs=2), data, split_speakers(data.speakers()))
    assert res.error is None, res.error
    uri = f"sqlite:///{tmp_path_factory.mktemp('calstore') / 'mlflow.db'}"
    tracking.connect(uri)
    runs = tracking.GridRuns.start("voiceclf", "calibration", {})
    known = Calibration(0.4, 0.7, "test")
    for cal in (None, known.to_dict()):
        run_id = runs.child("point", {})
        model_uri = runs.log_point(run_id, res.history, res.test, artifacts={}, model=res.model, cfg=cfg, input_example=np.array(x[:2]), calibration=cal)
        tracking.register_champion(model_uri, run_id, res.test, cfg)
    assert tracking.load("models:/voiceclf/1").calibration == calibration.IDENTITY
    assert tracking.load("models:/voiceclf/2").calibration == known
    return uri, known


@pytest.fixture(scope="module")
def inbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal_inbox")
    synth.make_corpus(root, speakers=6, clips=4, seed=21, first_speaker=81)
    (root / "audioMNIST_meta.txt").unlink()
    return root


def score(uri, inbox, out, *args):
    proc = run_job("score", inbox, "--out", out, *args, env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pd.read_csv(out, keep_default_na=False).set_index("path")


def test_the_models_calibration_maps_p_male_in_the_report(two_versions, inbox, tmp_path):
    uri, known = two_versions
    raw = score(uri, inbox, tmp_path / "raw.csv", "--model-uri", "models:/voiceclf/1")
    cal = score(uri, inbox, tmp_path / "cal.csv", "--model-uri", "models:/voiceclf/2")
    assert (raw["status"] == "ok").all() and list(raw.index) == list(cal.index)
    p_raw = raw["p_male"].astype(float).clip(1e-6, 1 - 1e-6)
    expected = sigmoid(known.a * np.log(p_raw / (1 - p_raw)) + known.b)
    np.testing.assert_allclose(cal["p_male"].astype(float), expected, atol=2e-5)
    assert (cal["p_male"].astype(float) - raw["p_male"].astype(float)).abs().max() > 0.05  # the map changed something
    p = cal["p_male"].astype(float)
    np.testing.assert_allclose(cal["confidence"].astype(float), np.where(p >= 0.5, p, 1 - p), atol=2e-6)
    assert (cal["label"] == np.where(p >= 0.5, "male", "female")).all()


def test_min_confidence_labels_uncertain_and_threshold_keeps_confidence_honest(two_versions, inbox, tmp_path):
    uri, _ = two_versions
    base = score(uri, inbox, tmp_path / "base.csv", "--model-uri", "models:/voiceclf/2")
    bar = float(base["confidence"].astype(float).median())
    low = base["confidence"].astype(float) < bar
    assert low.any() and (~low).any()
    rep = score(uri, inbox, tmp_path / "unc.csv", "--model-uri", "models:/voiceclf/2", "--min-confidence", bar)
    assert (rep["status"] == "ok").all()
    assert (rep.loc[low, "label"] == "uncertain").all()
    assert (rep.loc[~low, "label"] == base.loc[~low, "label"]).all()
    np.testing.assert_array_equal(rep["p_male"], base["p_male"])  # p_male kept
    # a threshold far from 0.5: the confidence is that of the label reported, not max(p, 1 - p)
    t = float(np.quantile(base["p_male"].astype(float), 0.75))
    thr = score(uri, inbox, tmp_path / "thr.csv", "--model-uri", "models:/voiceclf/2", "--threshold", t)
    p = thr["p_male"].astype(float)
    male = p >= t
    assert (thr["label"] == np.where(male, "male", "female")).all() and male.any() and (~male).any()
    np.testing.assert_allclose(thr["confidence"].astype(float), np.where(male, p, 1 - p), atol=2e-6)
    assert run_job("score", inbox, "--out", tmp_path / "x.csv", "--min-confidence", "1.5", env={"MLFLOW_TRACKING_URI": uri}).returncode == 2


def test_the_grid_fits_logs_and_registers_a_calibration(champion):
    """One synthetic corpus: fitted on the validation speakers; the metrics, the diagram and the map are in MLflow."""
    tracking.connect(champion)
    client = MlflowClient()
    mv = client.get_model_version_by_alias("voiceclf", "champion")
    run = client.get_run(mv.tags["run_id"])
    for key in ("test_ece", "test_ece_raw", "calibration_a", "calibration_b"):
        assert key in run.data.metrics, key
    assert 0 <= run.data.metrics["test_ece"] <= 0.5 and run.data.metrics["calibration_a"] > 0
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"reliability.png", "calibration.json"} <= names
    loaded = tracking.load()
    assert loaded.calibration.a == pytest.approx(run.data.metrics["calibration_a"]) and loaded.calibration.fitted_on == "validation speakers"


def test_a_map_that_does_not_transfer_between_held_out_corpora_is_not_carried():
    """Each training corpus's held-out predictions, overconfident in opposite ways: a map fitted on one makes the
    other worse, so the model carries the identity; when they agree, the map is carried."""
    rng = np.random.default_rng(3)

    def corpus(name, true_slope, n=4000):
        z = rng.normal(0, 3, n)
        y = (rng.random(n) < sigmoid(true_slope * z)).astype(int)
        return pd.DataFrame({"p": sigmoid(z), "y": y, "corpus": name, "speaker": [f"{name}{i}" for i in range(n)]})

    test = corpus("t", 0.5)
    cal, m = calibration.fit_for_point({"a": corpus("a", 0.3), "b": corpus("b", 3.0)}, None, test)
    assert cal == calibration.IDENTITY or cal.a == 1.0
    assert m["calibration_kept"] == 0.0 and m["xval_ece"] >= m["xval_ece_raw"] and m["test_ece"] == m["test_ece_raw"]
    cal, m = calibration.fit_for_point({"a": corpus("a", 0.5), "b": corpus("b", 0.5)}, None, test)
    assert cal.a == pytest.approx(0.5, abs=0.05) and m["calibration_kept"] == 1.0
    assert m["xval_ece"] < m["xval_ece_raw"] and m["test_ece"] < m["test_ece_raw"]
