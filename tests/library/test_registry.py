"""models:/ URIs, read by MLflow's own parser, against a real SQLite registry: every form resolves to its version
before the model loads, and every wrong one is one line that says what is missing."""
import sqlite3

import pytest
import soundfile as sf
from mlflow.tracking import MlflowClient

from conftest import run_job, voice_clip
from voiceclf import pipeline, tracking
from voiceclf.config import FeatureConfig


@pytest.fixture(scope="module")
def registry(champion, tmp_path_factory):
    """A copy of the session's store (its artifacts stay where they are) with three versions of voiceclf, all the
    champion's model: 1 holds @champion, 2 is in stage Production, 3 is the latest. The session's store is untouched."""
    folder = tmp_path_factory.mktemp("registry")
    src = sqlite3.connect(champion.removeprefix("sqlite:///"))
    dst = sqlite3.connect(folder / "mlflow.db")
    with dst:
        src.backup(dst)  # a consistent copy, whatever SQLite holds in its journal
    src.close()
    dst.close()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracking.connect(uri)
    client = MlflowClient()
    v1 = client.get_model_version_by_alias(tracking.MODEL_NAME, tracking.ALIAS)
    assert str(v1.version) == "1"
    cfg = FeatureConfig.from_json(v1.tags["feature_config"])
    for _ in range(2):
        tracking.register_version(v1.source, v1.run_id, {}, cfg, promote=False, reason="test")
    client.transition_model_version_stage(tracking.MODEL_NAME, "2", "Production")
    return uri


@pytest.mark.parametrize("uri, version", [("models:/voiceclf@champion", "1"), ("models:/voiceclf/2", "2"), ("models:/voiceclf/latest", "3"),
                                          ("models:/voiceclf/LATEST", "3"), ("models:/voiceclf/Production", "2")])
def test_every_form_resolves_before_the_model_loads(registry, uri, version):
    """Score starts its workers on the version's tags (registered_config) while the model loads: every form gets there,
    `latest` too (it fell through to a load before the workers started when the URI was parsed by hand)."""
    tracking.connect(registry)
    name, found, cfg = tracking.registered_config(uri)
    assert (name, found) == ("voiceclf", version)
    assert cfg == FeatureConfig.from_json(MlflowClient().get_model_version("voiceclf", "1").tags["feature_config"])


def test_a_loaded_model_is_the_version_resolved(registry):
    tracking.connect(registry)
    latest = tracking.load("models:/voiceclf/latest")
    assert latest.version == "3" and latest.uri == "models:/voiceclf/latest"
    assert tracking.load("models:/voiceclf/Production").version == "2"
    assert tracking.registered_version("runs:/0123456789abcdef/model") is None  # a run's model is in no registry
    logged = MlflowClient().get_model_version("voiceclf", "1").source  # models:/m-<id>: the logged model, in no registry
    assert tracking.registered_version(logged) is None and tracking.load(logged).version == ""


@pytest.mark.parametrize("uri, error, words", [
    ("models:/voiceclf/9", tracking.TrackingError, "version 9 of model voiceclf does not exist in sqlite:///.* \\(versions: 1, 2, 3\\)"),
    ("models:/voiceclf@nope", tracking.NoChampion, "no model registered as voiceclf@nope in sqlite:///"),
    ("models:/nosuch@champion", tracking.NoChampion, "no model registered as nosuch@champion in sqlite:///"),
    ("models:/nosuch/latest", tracking.NoChampion, "no model registered as nosuch in sqlite:///"),
    ("models:/nosuch/4", tracking.NoChampion, "no model registered as nosuch in sqlite:///"),
    ("models:/voiceclf/Staging", tracking.TrackingError, "no version of model voiceclf is in stage Staging .*versions: 1, 2, 3"),
    ("models:/voiceclf/3/extra", tracking.TrackingError, "models:/voiceclf/3/extra is not a model URI MLflow reads; use models:/NAME@ALIAS"),
    ("models:/voiceclf@", tracking.TrackingError, "is not a model URI MLflow reads"),
    ("models:/", tracking.TrackingError, "is not a model URI MLflow reads"),
])
def test_a_uri_that_names_nothing_is_one_line(registry, uri, error, words):
    tracking.connect(registry)
    with pytest.raises(error, match=words) as e:
        tracking.load(uri)
    assert "\n" not in str(e.value)
    assert tracking.registered_config(uri) is None  # score then loads, which says the same line


def test_a_wrong_kind_of_error_is_not_a_missing_champion(registry):
    """Only what train can fix (no model, no alias) is NoChampion, whose next step is `make train`."""
    tracking.connect(registry)
    for uri in ("models:/voiceclf/9", "models:/voiceclf/Staging", "models:/voiceclf/3/extra"):
        with pytest.raises(tracking.TrackingError) as e:
            tracking.registered_version(uri)
        assert not isinstance(e.value, tracking.NoChampion), uri


def test_score_reports_the_version_latest_named(registry, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sf.write(inbox / "a.wav", voice_clip(1.5), 16000, subtype="PCM_16")
    scored = pipeline.score_dirs([inbox], model_uri="models:/voiceclf/latest", tracking_uri=registry, jobs=1)
    assert list(scored.report["model_version"].astype(str)) == ["3"]
    assert list(scored.report["model_uri"]) == ["models:/voiceclf/latest"]


def test_the_score_job_says_a_bad_uri_in_one_line(registry, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sf.write(inbox / "a.wav", voice_clip(1.5), 16000, subtype="PCM_16")
    proc = run_job("score", inbox, "--out", tmp_path / "r.csv", "--model-uri", "models:/voiceclf/a/b", env={"MLFLOW_TRACKING_URI": registry})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "models:/voiceclf/a/b is not a model URI MLflow reads" in errors[0], proc.stderr[-3000:]
    assert not (tmp_path / "r.csv").exists()


def test_the_copied_store_left_the_session_store_alone(champion, registry):
    tracking.connect(champion)
    assert [str(mv.version) for mv in MlflowClient().search_model_versions("name='voiceclf'")] == ["1"]
