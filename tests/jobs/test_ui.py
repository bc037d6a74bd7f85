"""What the MLflow UI's run table shows (issue 23), read back from a real SQLite store through MLflow's client.

The session's ``champion`` store (one grid point trained in-process, see conftest) is read, never trained again.
"""
import getpass
import json
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO
from voiceclf import run_log, tracking
from voiceclf import train as tr


def grid_of(store: str):
    """(parent run, [child runs]) of the champion fixture's grid."""
    tracking.connect(store)
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    parents = [r for r in runs if r.data.tags.get("voiceclf.role") == "grid"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert children
    return parents[0], children


def test_run_names_tell_points_and_grids_apart_at_table_width(champion):
    """Family first, then only what varies; short enough for the table's ~16 visible characters."""
    points = [tr.GridPoint("mfcc_pitch"), tr.GridPoint("speaker_embedding", hidden=0), tr.GridPoint("speaker_embedding", hidden=64)]
    names = run_log.run_names(points)
    assert names == ["cnn", "head hidden=0", "head hidden=64"]
    lrs = run_log.run_names([tr.GridPoint(lr=1e-3), tr.GridPoint(lr=3e-4), tr.GridPoint("mfcc_deltas", lr=1e-3)])
    assert lrs == ["cnn mfcc_pitch lr=0.001", "cnn mfcc_pitch lr=0.0003", "cnn mfcc_deltas lr=0.001"]
    assert len(set(run_log.run_names([tr.GridPoint(), tr.GridPoint()]))) == 2  # equal points still get two names
    # the default grid's pooled (lbfgs) point ignores the epoch settings, so they tell no adam point apart from it
    from voiceclf import grid, points as pts

    g = grid.read_grid(REPO / "jobs" / "grid.toml")
    default = pts.expand(g["embedding_head"], "speaker_embedding") + pts.expand(g["cnn"], "mfcc_pitch")
    assert sorted(run_log.run_names(default)) == ["cnn", "head hidden=0", "head hidden=64", "head pooled"]
    when = time.mktime((2026, 12, 5, 11, 8, 0, 0, 0, -1))
    assert run_log.grid_run_name(["corpus"], 3, "demo", when) == "demo 12-05 11:08 corpus · 3 pts"
    assert run_log.grid_run_name(["a", "b"], 1, when=when) == "12-05 11:08 a+b · 1 pt"

    parent, children = grid_of(champion)
    corpus = children[0].data.params["corpora"]
    assert re.fullmatch(rf"\d\d-\d\d \d\d:\d\d {re.escape(corpus)} · 1 pt", parent.info.run_name), parent.info.run_name
    assert [c.info.run_name for c in children] == ["cnn"]
    assert children[0].data.tags["voiceclf.point"].startswith("mfcc_pitch lr=0.001")  # the full name stays findable


def test_the_winner_and_the_champion_are_tagged_and_the_champion_tag_moves(champion, tmp_path):
    parent, children = grid_of(champion)
    (winner,) = children
    assert winner.data.tags["winner"].startswith("★ val_score ") and "best of 1" in winner.data.tags["winner"]
    assert winner.data.tags["champion"] == "version 1 (voiceclf)"
    assert parent.data.tags["winner"] == winner.info.run_name
    assert parent.data.tags["voiceclf.winner_run_id"] == winner.info.run_id

    # the tag follows the alias: a new champion takes it from the run of the old one (a model name of its own:
    # the session's voiceclf champion stays as it is for the other tests)
    client = MlflowClient()
    model_uri = client.get_model_version("voiceclf", "1").source
    cfg = tracking.registered_config("models:/voiceclf/1")[2]
    runs = tracking.GridRuns.start("tag-moves", "tag-moves", {})
    first, second = runs.child("a", {}), runs.child("b", {})
    name = "voiceclf-tagcheck"
    assert tracking.register_version(model_uri, first, {}, cfg, model_name=name) == 1
    assert client.get_run(first).data.tags["champion"] == f"version 1 ({name})"
    tracking.register_version(model_uri, second, {}, cfg, promote=False, model_name=name)  # not promoted: nothing moves
    assert "champion" in client.get_run(first).data.tags and "champion" not in client.get_run(second).data.tags
    tracking.register_version(model_uri, second, {}, cfg, model_name=name)
    assert "champion" not in client.get_run(first).data.tags
    assert client.get_run(second).data.tags["champion"] == f"version 3 ({name})"
    assert client.get_run(winner.info.run_id).data.tags["champion"] == "version 1 (voiceclf)"  # another model's champion keeps its tag


def test_a_points_run_lasts_as_long_as_its_own_training(champion):
    """Start and end are the training's, not the grid's (children were opened with the grid and closed at its end)."""
    parent, children = grid_of(champion)
    for child in children:
        seconds = (child.info.end_time - child.info.start_time) / 1000
        # model logging, datasets and registration come after the training: outside the run's time
        assert seconds == pytest.approx(child.data.metrics["train_seconds"], abs=0.2), (seconds, child.data.metrics["train_seconds"])
        assert parent.info.start_time <= child.info.start_time and child.info.end_time <= parent.info.end_time
    # the times are the ones given, e.g. by a worker process that trained the point
    runs = tracking.GridRuns.start("times", "times", {})
    t0 = time.time() - 100.0
    run_id = runs.child("timed", {}, start_time_s=t0)
    runs.finish(run_id, end_time_s=t0 + 7.25)
    info = MlflowClient().get_run(run_id).info
    assert (info.start_time, info.end_time) == (round(t0 * 1000), round((t0 + 7.25) * 1000)) and info.status == "FINISHED"


def test_summary_metrics_are_one_value_at_step_0_and_curves_are_per_epoch(champion):
    """One value per run at step 0: the chart view compares them as bars."""
    _, children = grid_of(champion)
    client = MlflowClient()
    for child in children:
        summary = ["test_score", "test_balanced_acc", "best_val_score", "best_val_loss", "best_epoch", "train_seconds"]
        for key in summary:
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [0], key
        epochs = int(child.data.params["epochs"])
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_score")] == list(range(1, epochs + 1))


def test_the_parent_carries_its_winners_summary_metrics_under_the_same_names(champion):
    parent, children = grid_of(champion)
    winner = next(c for c in children if "winner" in c.data.tags)
    client = MlflowClient()
    summary = {k: v for k, v in winner.data.metrics.items()
               if [m.step for m in client.get_metric_history(winner.info.run_id, k)] == [0] and not k.startswith("system/")}
    assert {"test_score", "best_val_score", "best_epoch"} <= set(summary)
    assert {k: parent.data.metrics.get(k) for k in summary} == summary
    assert not any(k.startswith("best_test") or k.startswith("best_xval") for k in parent.data.metrics)
    # with cross-corpus validation the same function puts xval_score there (two corpora are trained in test_corpora)
    res = tr.PointResult(tr.GridPoint(), history=[{"val_score": 0.9, "val_loss": 0.3}], best_epoch=1, val={"val_score": 0.9},
                         test={"test_score": 0.8}, xval={"xval_score": 0.85})
    assert run_log.point_metrics(res)["xval_score"] == 0.85


def test_datasets_have_a_profile_and_a_schema(champion):
    """Speakers, recordings and hours per corpus and sex in the Dataset drawer; the shard columns as its schema."""
    _, children = grid_of(champion)
    client = MlflowClient()
    child = client.get_run(children[0].info.run_id)
    split = json.load(open(client.download_artifacts(child.info.run_id, "split.json")))
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in child.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    corpus = child.data.params["corpora"]
    for ctx, s in (("training", "train"), ("validation", "val"), ("test", "test")):
        profile = json.loads(inputs[ctx].profile)
        assert profile["speakers"] == len(split[s]) and profile["recordings"] > 0 and profile["windows"] >= profile["recordings"]
        # 16 clips of ~1-3 s per speaker
        assert 0.5 * profile["recordings"] / 3600 < profile["hours"] < 5.0 * profile["recordings"] / 3600, profile
        per = {k: v for k, v in profile.items() if k.startswith(f"{corpus} ")}
        assert set(per) == {f"{corpus} female", f"{corpus} male"}
        counts = [{unit: num for num, unit in re.findall(r"([\d.]+) (\w+)", v)} for v in per.values()]  # "6 speakers · 120 recordings · 0.05 h"
        assert sum(int(c["speakers"]) for c in counts) == profile["speakers"]
        assert sum(int(c["recordings"]) for c in counts) == profile["recordings"]
        schema = {c["name"]: c for c in json.loads(inputs[ctx].schema)["mlflow_colspec"]}
        assert schema["features"]["type"] == "array" and schema["features"]["items"]["type"] == "float"
        assert schema["path"]["type"] == "string" and schema["speaker"]["required"] is False


def test_runs_say_who_ran_them_from_which_code(champion):
    parent, children = grid_of(champion)
    head = None
    if shutil.which("git") and (REPO / ".git").exists():
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        head = out.stdout.strip() if out.returncode == 0 else None
    for run in (parent, *children):
        tags = run.data.tags
        assert tags["mlflow.user"] == getpass.getuser()
        assert tags["mlflow.source.name"] and tags["mlflow.source.type"] == "LOCAL"
        if head:
            assert tags["mlflow.source.git.commit"] == head


def test_the_demo_has_its_own_experiment_and_registered_model():
    from jobs import demo

    args = demo.parse_args([])
    assert args.experiment == args.model_name == tracking.DEMO_NAME != tracking.MODEL_NAME
    assert tracking.champion_uri(args.model_name) == "models:/voiceclf-demo@champion"
    assert demo.parse_args(["--experiment", "voiceclf", "--model-name", "voiceclf"]).model_name == "voiceclf"
    assert "voiceclf-demo" in (REPO / "README.md").read_text()


def test_figures_zoom_the_accuracy_axis_and_keep_titles_inside(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from voiceclf import figures

    history = [dict(train_loss=1.0 / e, val_loss=1.2 / e, train_acc=0.90 + e / 100, val_balanced_acc=0.92 + e / 100,
                    val_score=0.93 + e / 100, val_worst_corpus=0.91 + e / 100) for e in range(1, 6)]
    fig = figures.curves_figure(history, "speaker_embedding lr=0.001 ep=30 bs=128 hidden=64 wd=0.01", best_epoch=4)
    acc = fig.axes[1]
    lo, hi = acc.get_ylim()
    assert 0.85 < lo < 0.91 and 0.98 <= hi <= 1.01  # zoomed to 0.91..0.98, not 0..1
    conf = figures.confusion_figure(np.array([[12, 1], [2, 14]]), "test (held-out speakers), files\nspeaker_embedding lr=0.001 ep=30 bs=128 hidden=64 wd=0.01")
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200)
    rel = figures.reliability_figure(p, p, (rng.uniform(0, 1, 200) < p).astype(int),
                                     "test (held-out speakers), files\nspeaker_embedding lr=0.001 ep=30 bs=128 hidden=64 wd=0.01")
    for f in (fig, conf, rel):
        FigureCanvasAgg(f).draw()
        renderer = f.canvas.get_renderer()
        box = f.bbox
        titles = [ax.title for ax in f.axes] + ([f._suptitle] if f._suptitle is not None else [])
        for t in titles:
            e = t.get_window_extent(renderer)
            assert box.x0 - 1 <= e.x0 and e.x1 <= box.x1 + 1 and box.y0 - 1 <= e.y0 and e.y1 <= box.y1 + 1, t.get_text()
    assert figures.accuracy_limits([1.0, 1.0]) == (pytest.approx(0.995), pytest.approx(1.0025))
