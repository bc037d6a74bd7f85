"""The featurize job end to end: shard contract, every file accounted for, incremental, deterministic."""
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import plant_bad_files, run_job
from voiceclf import shards
from voiceclf.config import FeatureConfig


def test_shards_follow_the_contract(features):
    parts = shards.part_paths(features)
    assert parts and all(p.name.startswith("part-") for p in parts)
    schema = pq.read_schema(parts[0])
    assert schema.names == ["path", "source", "corpus", "sha256", "speaker", "label", "window", "offset_s", "speech_s", "source_sample_rate", "variant", "features"]
    assert str(schema.field("features").type) == "fixed_size_list<element: float>[3528]"
    cfg = FeatureConfig.from_json(schema.metadata[b"voiceclf.feature_config"].decode())
    assert cfg == FeatureConfig()
    rows, x, _ = shards.read(features)
    assert x.shape == (len(rows), 3, 98, 12) and x.dtype == np.float32 and np.isfinite(x).all()
    assert set(rows["label"]) == {"female", "male"} and rows["speaker"].nunique() == 24
    assert (rows["source_sample_rate"] == 16000).all()


def test_every_input_file_is_accounted_for(corpus, features):
    from voiceclf import corpus as corpus_mod

    inputs = set(corpus_mod.discover(corpus)["path"])
    rows, _, _ = shards.read(features, with_features=False)
    errors = shards.read_errors(features)
    assert set(rows["path"]) | set(errors["path"]) == inputs
    assert not set(rows["path"]) & set(errors["path"])
    got = dict(zip(errors["path"], errors["error"]))
    assert got == {"01/empty.wav": "empty", "01/notes.wav": "not_audio", "01/corrupt.wav": "corrupt", "01/silent.wav": "no_speech"}
    assert all("01/" in m for m in errors["message"])  # each reason names its file


def test_rerun_adds_nothing(corpus, features):
    before = {p.name: p.stat().st_mtime_ns for p in shards.part_paths(features)}
    errors_before = (features / "errors.csv").read_text()
    proc = run_job("featurize", "--variants", "0", corpus, "--out", features, "--jobs", "2", check=True)
    assert "nothing new" in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in shards.part_paths(features)} == before
    assert (features / "errors.csv").read_text() == errors_before


def test_jobs_1_and_2_give_identical_shards(corpus, features, tmp_path):
    out = tmp_path / "one"
    run_job("featurize", "--variants", "0", corpus, "--out", out, "--jobs", "1", check=True)
    a = pq.read_table(shards.part_paths(features))
    b = pq.read_table(shards.part_paths(out))
    assert a.schema == b.schema and a.num_rows == b.num_rows
    for name in a.column_names:  # bit for bit, column by column (a diff of 3528-float lists is unreadable)
        assert a.column(name).equals(b.column(name)), name


def test_small_shards_and_incremental_new_files(corpus, tmp_path):
    """--shard-rows bounds shard size; files added later are featurized alone on rerun."""
    from voiceclf import synth

    src = tmp_path / "src"
    synth.make_corpus(src, speakers=2, clips=6, seed=3)
    out = tmp_path / "out"
    run_job("featurize", "--variants", "0", src, "--out", out, "--shard-rows", "4", "--jobs", "1", check=True)
    parts = shards.part_paths(out)
    sizes = [pq.read_metadata(p).num_rows for p in parts]
    assert len(parts) >= 2 and max(sizes) < 4 + 3  # a shard closes at the first file boundary past 4 windows
    synth.make_corpus(tmp_path / "more", speakers=2, clips=12, seed=3)  # same speakers; take 1 of digits 0-1 is new
    for f in (tmp_path / "more").rglob("*_1.wav"):
        target = src / f.relative_to(tmp_path / "more")
        target.write_bytes(f.read_bytes())
    proc = run_job("featurize", "--variants", "0", src, "--out", out, "--shard-rows", "4", "--jobs", "1", check=True)
    assert "4 to do" in proc.stderr
    rows, _, _ = shards.read(out, with_features=False)
    assert rows["path"].nunique() == 16


def test_fail_on_error_exit_code(tmp_path):
    src = tmp_path / "src"
    (src / "female").mkdir(parents=True)
    plant_bad_files(src / "female")
    proc = run_job("featurize", "--variants", "0", src, "--out", tmp_path / "out", "--fail-on-error", "--jobs", "1")
    assert proc.returncode == 4, proc.stderr
    assert len(shards.read_errors(tmp_path / "out")) == 4


@pytest.mark.parametrize("case", ["missing_src", "meta_problem", "unwritable_out", "other_config"])
def test_bad_invocations_exit_2_with_one_line(case, corpus, features, tmp_path):
    args = [corpus, "--out", tmp_path / "out"]
    if case == "missing_src":
        args[0] = tmp_path / "nope"
    elif case == "meta_problem":
        bad = tmp_path / "bad"
        (bad / "07").mkdir(parents=True)
        (bad / "07" / "0_07_0.wav").write_bytes(b"")
        (bad / "audioMNIST_meta.txt").write_text(json.dumps({"01": {"gender": "male"}}))
        args[0] = bad
    elif case == "unwritable_out":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        args[2] = blocker / "out"
    elif case == "other_config":
        args = [corpus, "--out", features, "--feature-set", "mfcc_deltas"]
    proc = run_job("featurize", "--variants", "0", *args)
    assert proc.returncode == 2, proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert "error:" in last and "Traceback" not in proc.stderr


def test_variants_are_deterministic_augmentations_of_labelled_files(tmp_path):
    from voiceclf import synth

    src = tmp_path / "src"
    synth.make_corpus(src, speakers=2, clips=3, seed=9)
    outs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"out{jobs}"
        proc = run_job("featurize", src, "--out", out, "--variants", "2", "--jobs", jobs, check=True)
        assert "files=6," in proc.stderr  # files are counted once, whatever the variants
        outs.append(out)
    rows, x, _ = shards.read(outs[0])
    assert sorted(rows["variant"].unique()) == [0, 1, 2]
    assert (rows.groupby("path")["variant"].nunique() == 3).all()
    orig, var = x[(rows["variant"] == 0).to_numpy()], x[(rows["variant"] == 1).to_numpy()]
    assert len(orig) == len(var) and np.abs(orig - var).mean() > 0.1  # variants really differ
    a, b = pq.read_table(shards.part_paths(outs[0])), pq.read_table(shards.part_paths(outs[1]))
    assert a.column("features").equals(b.column("features"))  # seeded by the file's sha256


def test_augmentation_keeps_the_voice_and_sets_the_snr():
    from voiceclf import augment, synth

    rng = np.random.default_rng(0)
    y = synth.synth_utterance("male", rng, duration_s=1.0)
    noisy = augment.add_noise(y.astype(np.float64), np.random.default_rng(1), snr_db=10.0)
    loud = np.abs(y) >= np.median(np.abs(y))
    snr = 10 * np.log10(np.mean(y[loud].astype(np.float64) ** 2) / np.mean((noisy - y) ** 2))
    assert abs(snr - 10.0) < 0.5
    cfg = FeatureConfig()
    variants = augment.variants(y, cfg, 3, seed=7)
    assert len(variants) == 3 and all(v.shape == y.shape and v.dtype == np.float32 for v in variants)
    assert all(abs(np.abs(v).max() - cfg.target_peak) < 1e-4 for v in variants)  # cleaned like a decoded file
    # never a pitch change: the harmonics stay in the same pitch bands (profiles correlate), however noisy
    from voiceclf import features

    profile = lambda w: features.extract(w, cfg).features[0, 2].mean(axis=0)  # noqa: E731
    assert all(np.corrcoef(profile(v), profile(y))[0, 1] > 0.3 for v in variants)


def test_shards_written_before_the_renames_read_under_the_new_names(features, tmp_path):
    """Shards from before issue 10 call ``variant`` ``augment`` and ``speech_s`` ``duration_s``: same data, new names.
    A shard missing a column altogether is refused in one line that names it."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(features, old)
    for p in shards.part_paths(old):
        t = pq.read_table(p)
        old_names = [{v: k for k, v in shards.RENAMED.items()}.get(c, c) for c in t.column_names]
        pq.write_table(t.rename_columns(old_names).replace_schema_metadata(t.schema.metadata), p)
    assert "augment" in pq.read_schema(shards.part_paths(old)[0]).names
    rows, x, _ = shards.read(old)
    new_rows, new_x, _ = shards.read(features)
    pd.testing.assert_frame_equal(rows, new_rows)
    assert np.array_equal(x, new_x)
    p = shards.part_paths(old)[0]
    t = pq.read_table(p)
    pq.write_table(t.drop(["augment"]).replace_schema_metadata(t.schema.metadata), p)
    with pytest.raises(shards.ShardError, match=r"part-.*older voiceclf \(no variant column\)"):
        shards.read(old)


def test_featurize_dir_reports_progress_and_accounts_for_every_file_in_process(corpus, tmp_path):
    from voiceclf import pipeline

    events = []
    [summary] = pipeline.featurize_dir([corpus], tmp_path / "f", jobs=1, on_progress=events.append)
    assert summary.files == summary.todo == len(list(corpus.rglob("*.wav")))
    assert [e.done for e in events] == sorted(e.done for e in events) and events[-1].done == events[-1].total == summary.todo
    assert events[-1].errors == summary.errors == 4  # the planted empty, text, corrupt and silent files
    rows = shards.read(tmp_path / "f", with_features=False)[0]
    assert rows["path"].nunique() + len(shards.read_errors(tmp_path / "f")) == summary.files
    [again] = pipeline.featurize_dir([corpus], tmp_path / "f", jobs=1)
    assert again.todo == 0 and again.shards_written == 0


def test_a_batch_runs_blas_on_one_thread_and_gives_the_threads_back(corpus, monkeypatch):
    """Inside featurize_batch every BLAS/OpenMP pool has one thread (the same sums whatever --jobs); after it, what it had."""
    from threadpoolctl import threadpool_info

    from voiceclf import features, file_windows
    from voiceclf.config import FeatureConfig

    before = [(i["filepath"], i["num_threads"]) for i in threadpool_info()]
    seen, extract = [], features.extract
    monkeypatch.setattr(features, "extract", lambda y, cfg: seen.append({i["num_threads"] for i in threadpool_info()}) or extract(y, cfg))
    paths = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*.wav"))[:2]
    for _ in range(2):  # the libraries are found once per process; the limit holds on every call
        file_windows.featurize_batch([file_windows.Item(path=p, source=str(corpus)) for p in paths], FeatureConfig())
    assert seen and all(s == {1} for s in seen)
    assert [(i["filepath"], i["num_threads"]) for i in threadpool_info()] == before
