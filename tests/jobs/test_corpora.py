"""Several corpora, two model families, champion by how a model does on speakers it never saw."""
import csv

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import run_job
from voiceclf import pipeline, shards, synth, tracking

SETS = ("mfcc_pitch", "speaker_embedding")


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    """Two synthetic corpora whose speaker folders have the same names (01..08), featurized in one call: both sets."""
    root = tmp_path_factory.mktemp("corpora")
    synth.make_corpus(root / "north", speakers=8, clips=5, seed=11)
    synth.make_corpus(root / "south", speakers=8, clips=5, seed=12)
    out = root / "features"
    proc = run_job("featurize", root / "north", root / "south", "--out", out, "--feature-set", ",".join(SETS), "--variants", "1", "--jobs", "2", check=True,
                   process=True)  # a process of its own: loky's warnings are printed by the interpreter (pytest would keep them)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(SETS)  # several sets: one folder each
    # the embedding set's workers start with torch loaded: loky would take its import for a leak and restart them
    assert "A worker stopped" not in proc.stderr, proc.stderr[-2000:]
    return root, out


def test_one_call_keeps_corpora_apart(two_corpora):
    _, out = two_corpora
    for fs in SETS:
        rows, x, cfg = shards.read(out / fs)
        assert cfg.feature_set == fs and x.shape[1:] == cfg.shape
        assert set(rows["corpus"]) == {"north", "south"}
        assert rows["speaker"].nunique() == 16  # two corpora's "01" are two people
        assert set(rows.loc[rows["corpus"] == "north", "speaker"].str.split("/").str[0]) == {"north"}
        assert set(rows["variant"]) == {0, 1}


def test_manifest_corpus_column(tmp_path):
    from voiceclf import corpus

    synth.make_corpus(tmp_path / "a", speakers=2, clips=2, seed=1)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("a/*/*.wav"))
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "speaker", "corpus"])
        for i, p in enumerate(files):
            w.writerow([p, "female" if p.split("/")[1] == "01" else "male", p.split("/")[1], "one" if i % 2 else ""])
    df = corpus.discover(tmp_path / "m.csv")
    assert set(df["corpus"]) == {"one", tmp_path.name}  # the column where given, else the manifest's folder


def child_runs(uri):
    tracking.connect(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name("voiceclf")
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if "mlflow.parentRunId" in r.data.tags], [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def test_both_families_hold_out_a_corpus_and_log_per_corpus_metrics(two_corpora, tmp_path):
    _, out = two_corpora
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = run_job("train", "--features", out, "--holdout-corpus", "south", "--epochs", "3", "--lr", "1e-3", "--hidden", "0", "--jobs", "2",
                   env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, children, parents = child_runs(uri)
    assert {r.data.params["family"] for r in children} == {"cnn", "embedding_head"}
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.params["holdout_corpus"] == "south"
        m = r.data.metrics
        assert "test_speaker_bacc.south" in m and "test_speaker_bacc.north" not in m  # the test set is the held-out corpus
        assert "val_speaker_bacc.north" in m and "val_speaker_bacc.south" not in m
        assert m["test_score"] == m["test_speaker_bacc.south"]
        # the pooled logistic head (solver lbfgs, in the default grid) is fitted once, to convergence: one step
        want = [1] if r.data.params.get("solver") == "lbfgs" else [1, 2, 3]
        assert [h.step for h in client.get_metric_history(r.info.run_id, "val_score")] == want
        # the runs table's Dataset column: one input per split, digest from the data fingerprint, counts per corpus and sex
        inputs = {t.value: d for d in r.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
        assert set(inputs) == {"training", "validation", "test"}
        tags = {t.key: t.value for t in inputs["test"].tags}
        assert tags["data_fingerprint"] == r.data.params["data_fingerprint"] and "south.female.speakers" in tags and "north.female.speakers" not in tags
        assert inputs["training"].dataset.source_type == "local" and r.data.params["family"] in ("cnn", "embedding_head")
    # one training corpus is left: nothing to leave out in turn, so val_score ranks
    assert all("xval_score" not in r.data.metrics and r.data.params["selection"].startswith("val_score") for r in children)
    best = max(children, key=lambda r: (r.data.metrics["best_val_score"], -r.data.metrics["best_val_loss"]))
    mv = client.get_model_version_by_alias("voiceclf", "champion")
    assert mv.tags["run_id"] == best.info.run_id and mv.tags["promoted"] == "true"
    assert parents[0].data.tags["voiceclf.winner_run_id"] == best.info.run_id
    note = parents[0].data.tags["mlflow.note.content"]
    assert "| winner | point |" in note and note.count("**★**") == 1 and "held-out corpus **south**" in note
    assert "test_score" in mv.description and "south" in mv.description and "Promotion: first champion" in mv.description
    assert "xval_score" in client.get_experiment_by_name("voiceclf").tags["mlflow.note.content"]


def train_in_process(features, uri: str, force_promote: bool = False, **values):
    """pipeline.train_grid on the default grid file with ``values`` for every family, one training at a time."""
    from jobs.train import DEFAULT_GRID

    grids = pipeline.read_grid(DEFAULT_GRID, {k: v if isinstance(v, list) else [v] for k, v in values.items()})
    return pipeline.train_grid([features], grids, tracking_uri=uri, jobs=1, system_metrics=False, force_promote=force_promote)


def test_a_worse_winner_is_registered_but_not_promoted(two_corpora, tmp_path):
    _, out = two_corpora
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    emb = out / "speaker_embedding"
    good = train_in_process(emb, uri, epochs=20, lr=3e-3, hidden=0)
    assert good.promoted and good.version == 1
    _, children, _ = child_runs(uri)  # two training corpora: each left out in turn ranks the point
    m = children[0].data.metrics
    assert m["xval_score"] == pytest.approx((m["xval_speaker_bacc.north"] + m["xval_speaker_bacc.south"]) / 2)
    # the window head only: lr and epochs do not touch the grid's pooled (lbfgs) point, which would not be worse
    bad = train_in_process(emb, uri, epochs=1, lr=1e-9, hidden=0, feature_noise=False, solver="adam")
    assert bad.version == 2 and not bad.promoted and "not promoted" in bad.reason
    tracking.connect(uri)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("voiceclf", "champion").version) == "1"
    v2 = client.get_model_version("voiceclf", "2")
    assert v2.tags["promoted"] == "false" and "not promoted" in v2.tags["promotion"]
    forced = train_in_process(emb, uri, force_promote=True, epochs=1, lr=1e-9, hidden=0, feature_noise=False, solver="adam")
    assert forced.promoted and "promoted anyway" in forced.reason
    assert str(client.get_model_version_by_alias("voiceclf", "champion").version) == "3"


def test_score_with_an_embedding_champion(two_corpora, tmp_path):
    root, out = two_corpora
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    train_in_process(out / "speaker_embedding", env["MLFLOW_TRACKING_URI"], epochs=20, lr=3e-3, hidden=0)
    unseen = tmp_path / "unseen"
    synth.make_corpus(unseen, speakers=4, clips=3, seed=99, first_speaker=21)
    (unseen / "notes.txt").write_text("not audio")
    proc = run_job("score", unseen, "--out", tmp_path / "r.csv", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = pd.read_csv(tmp_path / "r.csv")
    audio_rows = report[report["path"].str.endswith(".wav")]
    assert len(report) == 14 and (audio_rows["status"] == "ok").all()
    assert report.loc[report["path"].str.endswith("notes.txt"), "status"].item() == "error"
    truth = audio_rows["path"].str.extract(r"/(\d\d)/")[0].astype(int).map(lambda s: synth.speaker_gender(s))
    assert (audio_rows["label"].to_numpy() == truth.to_numpy()).mean() >= 0.75


def test_score_refuses_a_model_trained_on_another_encoder(tmp_path):
    """The FeatureConfig names the encoder weights; a model made on other weights is refused before any work."""
    import dataclasses

    import numpy as np

    from voiceclf.config import FeatureConfig
    from voiceclf.model import EmbeddingHead

    cfg = dataclasses.replace(FeatureConfig.for_feature_set("speaker_embedding"), encoder_sha256="ab" * 32)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking.connect(uri)
    runs = tracking.GridRuns.start("voiceclf", "other-encoder", {})
    run_id = runs.child("point", {})
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    model_uri = runs.log_point(run_id, [], {}, artifacts={}, model=EmbeddingHead().eval(), cfg=cfg, input_example=x)
    tracking.register_champion(model_uri, run_id, {}, cfg)
    rec = tmp_path / "rec"
    synth.make_corpus(rec, speakers=2, clips=1, seed=1)
    proc = run_job("score", rec, "--out", tmp_path / "r.csv", env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 1 and "sha256" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "r.csv").exists()


def test_a_champion_of_the_other_family_is_rescored_on_the_same_speakers(two_corpora, tmp_path):
    """A CNN champion, then a run with embeddings only: the champion is featurized again with its own config to compare."""
    _, out = two_corpora
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    train_in_process(out / "mfcc_pitch", uri, epochs=2, lr=1e-3)
    train_in_process(out / "speaker_embedding", uri, epochs=2, hidden=0)
    tracking.connect(uri)
    v2 = MlflowClient().get_model_version("voiceclf", "2")
    assert v2.tags["family"] == "embedding_head"
    assert "vs the current champion (version 1)" in v2.tags["promotion"], v2.tags["promotion"]
