"""The grid: one check of a grid's values wherever they come from (file, flags, caller), and one grid run
(``grid.run_grid``) that train_grid logs and the benchmark (bench/loco.py) uses as it is."""
import numpy as np
import pytest

from voiceclf import grid
from voiceclf.compute import Compute, Workers
from voiceclf.config import FeatureConfig
from voiceclf.dataset import Data
from voiceclf.parallel import EngineError
from voiceclf.points import GridError, check_grid, expand
from voiceclf.train import best, rank_key


def three_corpora(seed: int = 0) -> Data:
    """36 speakers in three corpora (6 of each sex each), a few 256-d windows per recording; the sex in 8 dimensions."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(36):
        sex, corpus = s % 2, f"c{s % 3}"
        voice = rng.normal(0, 1, 256) + 2.5 * sex * np.r_[np.ones(8), np.zeros(248)]
        for f in range(3):
            for _ in range(2):
                rows.append((voice + rng.normal(0, 1.5, 256), sex, f"{corpus}/{s}", corpus, f"/d/{s}_{f}.wav"))
    x, y, spk, corpus, file = map(np.array, zip(*rows))
    return Data(x.astype(np.float32), y.astype(np.int64), spk, corpus, file, np.zeros(len(y), np.int8),
                FeatureConfig.for_feature_set("speaker_embedding"))


@pytest.mark.parametrize("grids, message", [
    ({"rnn": {}}, r"unknown table\(s\) \['rnn'\]"),
    ({"cnn": {"learning_rate": [1e-3]}}, r"\[cnn\] learning_rate is not a hyperparameter"),
    ({"cnn": {"lr": []}}, r"\[cnn\] lr must be a non-empty list"),
    ({"cnn": {"epochs": [2.5]}}, r"\[cnn\] epochs takes int values, got 2.5"),
    ({"cnn": {"epochs": [True]}}, r"epochs takes int values, got True"),
    ({"cnn": {"lr": ["fast"]}}, r"lr takes float values, got 'fast'"),
    ({"cnn": {"feature_noise": [1]}}, r"feature_noise takes bool values, got 1"),
    ({"embedding_head": {"solver": ["sgd"]}}, r"solver 'sgd' is not one of adam, lbfgs"),
    ({"embedding_head": {"balance": ["speakers"]}}, r"balance 'speakers' is not one of speaker, class"),
    ({"cnn": {"solver": ["lbfgs"]}}, r"\[cnn\] solver lbfgs fits the embedding head only"),
    ({"cnn": [1]}, r"\[cnn\] must be a table"),
])
def test_a_grid_is_checked_in_one_place_with_what_was_wrong(grids, message):
    with pytest.raises(GridError, match=message):
        check_grid(grids)


def test_check_grid_makes_lists_of_each_type_and_expand_uses_it():
    assert check_grid({"cnn": {"lr": 1, "epochs": [2, 3]}}) == {"cnn": {"lr": [1.0], "epochs": [2, 3]}}
    assert isinstance(check_grid({"cnn": {"lr": 1}})["cnn"]["lr"][0], float)
    assert [p.epochs for p in expand({"epochs": [2, 3]}, "mfcc_pitch")] == [2, 3]
    with pytest.raises(GridError, match="epochs takes int"):
        expand({"epochs": ["2"]}, "mfcc_pitch")
    # an override for every family (--hidden 0,64) adds no CNN point: the CNN has no hidden width (it trained twice)
    assert len(expand({"hidden": [0, 64], "C": [1e-3, 1e-2], "lr": [1e-3, 3e-4]}, "mfcc_pitch")) == 2
    assert len(expand({"hidden": [0, 64]}, "speaker_embedding")) == 2


def test_read_grid_checks_the_file_and_the_overrides(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text("[cnn]\nlr = [1e-3]\nbogus = [1]\n")
    with pytest.raises(GridError, match=r"grid file .*g.toml: \[cnn\] bogus is not a hyperparameter"):
        grid.read_grid(path)
    path.write_text("[cnn]\nlr = 1e-3\n")
    assert grid.read_grid(path, {"epochs": [2]}) == {"cnn": {"lr": [1e-3], "epochs": [2]}, "embedding_head": {"epochs": [2]}}
    with pytest.raises(GridError, match=r"\[cnn\] epochs takes int values, got 0.5"):
        grid.read_grid(path, {"epochs": [0.5]})


def test_compute_arguments_are_checked_once_for_every_flow(tmp_path):
    assert Compute() == Compute(jobs=-1, backend="loky", scheduler=None, device="auto")
    for bad in (0, -2, True, 1.5):
        with pytest.raises(EngineError, match="jobs must be -1"):
            Workers(jobs=bad)
    with pytest.raises(EngineError, match="backend must be one of .*, got 'spark'"):
        Compute(backend="spark")
    with pytest.raises(EngineError, match="dask needs a scheduler"):  # the engine's own rule, applied before any work
        Workers(backend="dask")
    from voiceclf import pipeline

    with pytest.raises(TypeError, match="device"):  # featurize runs no model: it takes no device
        pipeline.featurize_dir([tmp_path], tmp_path / "out", device="cuda")
    store = tmp_path / "mlflow.db"
    with pytest.raises(EngineError, match="jobs must be -1"):  # before the store is opened
        pipeline.train_grid([tmp_path], {}, tracking_uri=f"sqlite:///{store}", jobs=0)
    assert not store.exists()


class Recorder(grid.GridWatcher):
    def __init__(self):
        self.calls = []

    def planned(self, plan):
        self.calls.append(("planned", len(plan.tasks)))

    def starting(self, i, start_s):
        self.calls.append(("starting", i))

    def trained(self, i, left_out, res):
        self.calls.append(("trained", i, left_out))

    def point_done(self, i, res):
        self.calls.append(("done", i, res.calibration is not None))


def test_run_grid_trains_every_point_and_its_refits_and_ranks_them_by_the_cross_corpus_score():
    data = three_corpora()
    values = {"embedding_head": {"epochs": [2], "batch_size": [32], "hidden": [0, 16], "solver": ["adam", "lbfgs"]}}
    rec = Recorder()
    out = grid.run_grid({"speaker_embedding": data}, values, holdout_corpus="c2", jobs=1, watcher=rec)
    plan = out.plan
    assert [p.name for p in plan.points] == [p.name for p in expand(values["embedding_head"], "speaker_embedding")] and len(plan.points) == 3
    assert sorted(plan.xsplits) == ["c0", "c1"] and set(plan.split["test"]) == set(data.speaker[data.corpus == "c2"])
    # each point once on the split, then without each training corpus; calibrated once all of its trainings are in
    assert rec.calls[0] == ("planned", 9)
    for i in range(3):
        assert [c for c in rec.calls if c[0] == "trained" and c[1] == i] == [("trained", i, None), ("trained", i, "c0"), ("trained", i, "c1")]
    assert [c for c in rec.calls if c[0] == "done"] == [("done", i, True) for i in range(3)]
    assert rec.calls.count(("starting", 0)) == 3  # in-process: every training says when it starts
    for r in out.results:
        assert r.error is None and r.model is not None
        assert set(r.xval) >= {"xval_score", "xval_speaker_bacc.c0", "xval_speaker_bacc.c1"}
        assert r.selection_score == r.xval["xval_score"]
    keys = [rank_key(r) for r in out.ranked]
    assert keys == sorted(keys, reverse=True) and len(out.ranked) == 3
    assert out.winner is best(out.results) is out.ranked[0]


def test_the_benchmark_runs_the_train_jobs_grid(tmp_path):
    """bench/loco.py reads grid.toml with read_grid (its checks) and runs grid.run_grid once per held-out corpus."""
    from bench import loco
    from jobs.train import DEFAULT_GRID

    assert loco.GRID_FILE == DEFAULT_GRID and loco.read() == grid.read_grid(DEFAULT_GRID)
    assert loco.read(epochs=2)["cnn"]["epochs"] == loco.read(epochs=2)["embedding_head"]["epochs"] == [2]
    bad = tmp_path / "bad.toml"
    bad.write_text("[embedding_head]\nsolver = ['sgd']\n")
    with pytest.raises(GridError):
        loco.read(bad)
    data = three_corpora(1)
    values = {"embedding_head": {"epochs": [1], "batch_size": [32], "solver": ["adam", "lbfgs"]}}
    folds = loco.run({"speaker_embedding": data}, values, n_jobs=1, log=lambda m: None)
    assert [f.corpus for f in folds] == ["c0", "c1", "c2"]
    for f in folds:
        direct = grid.run_grid({"speaker_embedding": data}, values, holdout_corpus=f.corpus, jobs=1)
        assert [(r.point, r.xval["xval_score"], r.test["test_score"]) for r in f.outcome.ranked] == \
               [(r.point, r.xval["xval_score"], r.test["test_score"]) for r in direct.ranked]
        assert loco.chosen(f).point == direct.winner.point
    table = loco.summary(folds)
    assert set(table["held_out"]) == {"c0", "c1", "c2"} and (table["speaker_bacc"] > 0.5).all()
