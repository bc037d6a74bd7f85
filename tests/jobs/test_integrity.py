"""The training data across reruns, crashes and damage: what featurize and train must not do to the shards.

Shards keep a file's recording and its variants together; a rerun reconciles the shards with what
is on disk now; damaged shards are named, never read as data. (Manifests: tests/jobs/test_manifests.py.)
"""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from conftest import refused_naming, run_job
from voiceclf import file_windows, shards, synth
from voiceclf.config import FeatureConfig


def _shard_files(out) -> list[dict[str, set[int]]]:
    """Per shard: sha256 → the variant values of its rows."""
    per_shard = []
    for p in shards.part_paths(out):
        t = pq.read_table(p, columns=["sha256", "variant"]).to_pandas()
        per_shard.append({h: set(g) for h, g in t.groupby("sha256")["variant"]})
    return per_shard


def _assert_files_whole(per_shard: list[dict[str, set[int]]], variants: int) -> None:
    seen = [h for shard in per_shard for h in shard]
    assert len(seen) == len(set(seen)), "a file's rows straddle two shards"
    for shard in per_shard:
        for h, values in shard.items():
            assert values == set(range(variants + 1)), f"{h[:12]}: variant values {sorted(values)} in its shard"


# -- a file's recording and variants live in one shard ------------------------------
@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    synth.make_corpus(root, speakers=2, clips=3, seed=5)
    return root


def test_writer_keeps_a_file_and_its_variants_in_one_shard(small_corpus, tmp_path):
    from voiceclf import corpus

    cfg = FeatureConfig()
    items = [file_windows.Item(path=r.path, source=r.source, corpus=r.corpus, speaker=r.speaker, label=r.label)
             for r in corpus.discover(small_corpus).itertuples(index=False)]
    results = file_windows.featurize_batch(items, cfg, variants=2)
    assert [r.item.variant for r in results] == [0, 1, 2] * len(items)
    writer = shards.ShardWriter(tmp_path / "out", cfg, shard_rows=1)
    (tmp_path / "out").mkdir()
    for r in results:
        writer.add(r)
    writer.flush()
    per_shard = _shard_files(tmp_path / "out")
    assert len(per_shard) == len(items)  # one shard per file: each file's rows reach shard_rows
    _assert_files_whole(per_shard, 2)

    # interrupted after a recording and one variant: the unfinished file is left out, not cut
    part = tmp_path / "part"
    part.mkdir()
    writer = shards.ShardWriter(part, cfg, shard_rows=10_000)
    for r in results[:5]:  # file 1 whole, file 2's recording and first variant
        writer.add(r)
    writer.flush(whole_files_only=True)
    per_shard = _shard_files(part)
    assert [set(s) for s in per_shard] == [{results[0].item.sha256}]
    _assert_files_whole(per_shard, 2)


def test_featurize_small_shards_keep_files_whole(small_corpus, tmp_path):
    out = tmp_path / "out"
    run_job("featurize", small_corpus, "--out", out, "--shard-rows", "1", "--variants", "2", "--jobs", "1", check=True)
    per_shard = _shard_files(out)
    assert len(per_shard) == 6
    _assert_files_whole(per_shard, 2)


# -- a damaged shard is named, never trained on -------------------------------------
def _zero_middle_of_features(path) -> None:
    """Zero 64 bytes in the middle of the features column's pages (not its header, not the footer)."""
    md = pq.read_metadata(path)
    rg = md.row_group(0)
    col = next(rg.column(i) for i in range(rg.num_columns) if rg.column(i).path_in_schema.startswith("features"))
    raw = bytearray(path.read_bytes())
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    mid = start + col.total_compressed_size // 2
    assert any(raw[mid : mid + 64])
    raw[mid : mid + 64] = bytes(64)
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def damaged(small_corpus, tmp_path_factory):
    """Two copies of a shard folder: one with zeroed bytes inside a shard's pages, one with a truncated shard."""
    import shutil

    base = tmp_path_factory.mktemp("damaged")
    good = base / "good"
    run_job("featurize", small_corpus, "--out", good, "--shard-rows", "4", "--variants", "0", "--jobs", "1", check=True)
    parts = shards.part_paths(good)
    assert len(parts) >= 2
    out = {}
    for kind in ("zeroed", "truncated"):
        shutil.copytree(good, base / kind)
        victim = base / kind / parts[1].name
        if kind == "zeroed":
            _zero_middle_of_features(victim)
        else:
            victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        out[kind] = (base / kind, victim.name)
    return out


@pytest.mark.parametrize("kind", ["zeroed", "truncated"])
def test_train_refuses_a_damaged_shard(damaged, kind, tmp_path):
    out, name = damaged[kind]
    proc = run_job("train", "--features", out, "--epochs", "1", "--jobs", "1", "--no-register",
                   env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    refused_naming(proc, name)


@pytest.mark.parametrize("kind", ["zeroed", "truncated"])
def test_featurize_refuses_a_damaged_shard_and_says_how_to_rebuild(damaged, small_corpus, kind):
    out, name = damaged[kind]
    proc = run_job("featurize", small_corpus, "--out", out, "--variants", "0", "--jobs", "1")
    last = refused_naming(proc, name)
    assert "delete it and rerun featurize" in last
    # as it says: without the shard, a rerun featurizes its files again and the folder reads whole
    (out / name).unlink()
    run_job("featurize", small_corpus, "--out", out, "--shard-rows", "4", "--variants", "0", "--jobs", "1", check=True)
    rows, x, _ = shards.read(out)
    assert rows["path"].nunique() == 6 and len(x) == len(rows)


# -- a rerun brings the shards in line with the sources ----------------------------
def _label_folders(small_corpus, root):
    """The small corpus as label folders (<root>/<label>/<speaker>/*.wav), plus a file that is not audio."""
    import json
    import shutil

    meta = json.loads((small_corpus / synth.META_FILE).read_text())
    for spk, entry in meta.items():
        shutil.copytree(small_corpus / spk, root / entry["gender"] / spk)
    (root / "female" / "notes.wav").write_text("not audio\n")
    return root


def _files(out) -> dict[str, dict]:
    rows, _, _ = shards.read(out, with_features=False)
    return {h: dict(paths=set(g["path"]), labels=set(g["label"]), speakers=set(g["speaker"]), variant=set(g["variant"]))
            for h, g in rows.groupby("sha256")}


def test_rerun_relabels_moved_files_and_drops_deleted_ones(small_corpus, tmp_path):
    src = _label_folders(small_corpus, tmp_path / "src")
    out = tmp_path / "out"
    args = ["--out", out, "--variants", "1", "--shard-rows", "4", "--jobs", "1"]
    run_job("featurize", src, *args, check=True)
    moved, deleted = src / "male" / "02" / "1_02_0.wav", src / "female" / "01" / "2_01_0.wav"
    moved_hash, deleted_hash = file_windows.sha256_file(moved), file_windows.sha256_file(deleted)
    before = _files(out)
    assert before[moved_hash]["labels"] == {"male"} and deleted_hash in before
    assert "notes.wav" in set(shards.read_errors(out)["path"].str.split("/").str[-1])

    moved.rename(src / "female" / "01" / "1_02_0.wav")
    deleted.unlink()
    (src / "female" / "notes.wav").unlink()
    proc = run_job("featurize", src, *args, check=True)
    log = proc.stderr
    assert "1 file(s) relabelled (male/02/1_02_0.wav → female/01/1_02_0.wav (male → female))" in log, log
    assert "1 gone and removed (female/01/2_01_0.wav)" in log and "1 errors.csv row(s) dropped (female/notes.wav)" in log
    assert "nothing new" in log  # moved, not new: it is not featurized again
    after = _files(out)
    assert deleted_hash not in after
    assert after[moved_hash] == dict(paths={"female/01/1_02_0.wav"}, labels={"female"}, speakers={"src/01"}, variant={0, 1})
    assert {h: v for h, v in after.items() if h != moved_hash} == {h: v for h, v in before.items() if h not in (moved_hash, deleted_hash)}
    assert len(shards.read_errors(out)) == 0
    rows, x, _ = shards.read(out)
    assert len(rows) == len(x)

    # in line now: a rerun rewrites nothing
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards.part_paths(out)}
    proc = run_job("featurize", src, *args, check=True)
    assert "reconciled" not in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in shards.part_paths(out)} == mtimes


def test_rerun_leaves_other_sources_alone(small_corpus, tmp_path):
    """A shard folder may hold corpora featurized by separate runs: a run reconciles only its own sources."""
    src = _label_folders(small_corpus, tmp_path / "src")
    out = tmp_path / "out"
    run_job("featurize", small_corpus, "--out", out, "--variants", "0", "--jobs", "1", check=True)
    proc = run_job("featurize", src, "--out", out, "--variants", "0", "--jobs", "1", check=True)
    assert "reconciled" not in proc.stderr
    rows, _, _ = shards.read(out, with_features=False)
    assert set(rows["source"]) == {str(small_corpus)}  # src's files have the same content: skipped as done
    assert rows["path"].nunique() == 6


