"""Manifests through the featurize job: one label per file, and only files of the manifest's own folder unless allowed.

The manifest reader's own cases (columns, line numbers, relative paths) are in tests/library/test_corpus.py.
"""
from __future__ import annotations

import pytest

from conftest import refused_naming, run_job
from voiceclf import shards


# -- a manifest says one thing about each file, and about files of its own folder ---
def _wav(path, seconds: float = 1.2) -> None:
    import soundfile as sf

    from conftest import voice_clip

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, voice_clip(seconds), 16000, subtype="PCM_16")


def test_manifest_file_listed_with_two_labels_is_refused(tmp_path):
    from voiceclf import corpus

    for f in ("a.wav", "b.wav"):
        _wav(tmp_path / "m" / f)
    m = tmp_path / "m" / "list.csv"
    m.write_text("path,label\na.wav,female\nb.wav,male\n./a.wav,male\n")
    with pytest.raises(corpus.CorpusError, match="listed twice with different labels") as ei:
        corpus.discover(m)
    assert "'a.wav' (line 2: female, line 4: male)" in str(ei.value)
    proc = run_job("featurize", m, "--out", tmp_path / "out", "--variants", "0", "--jobs", "1")
    last = refused_naming(proc, "list.csv")
    assert "line 2" in last and "line 4" in last and "b.wav" not in last
    assert not (tmp_path / "out").exists() or not shards.part_paths(tmp_path / "out")


def test_manifest_file_listed_twice_with_one_label_is_one_row(tmp_path):
    from voiceclf import corpus

    for f in ("a.wav", "b.wav"):
        _wav(tmp_path / "m" / f)
    (tmp_path / "m" / "sub").mkdir()
    m = tmp_path / "m" / "list.csv"
    m.write_text("path,label,speaker\na.wav,f,s1\nb.wav,male,s2\nsub/../a.wav,female,s1\n")
    df = corpus.discover(m)
    assert list(df["path"]) == ["a.wav", "b.wav"] and list(df["label"]) == ["female", "male"]


def test_manifest_paths_outside_its_folder_are_refused_unless_allowed(tmp_path):
    from voiceclf import corpus

    _wav(tmp_path / "m" / "in.wav")
    _wav(tmp_path / "elsewhere.wav", seconds=1.3)  # another content: one content under two paths is one row and a duplicate
    m = tmp_path / "m" / "list.csv"
    m.write_text(f"path,label\nin.wav,female\n../elsewhere.wav,male\n{tmp_path / 'm' / 'in.wav'},female\n")
    with pytest.raises(corpus.CorpusError, match="outside") as ei:
        corpus.discover(m)
    assert "line 3: '../elsewhere.wav'" in str(ei.value) and f"line 4: '{tmp_path / 'm' / 'in.wav'}'" in str(ei.value)
    df = corpus.discover(m, allow_outside_paths=True)
    assert list(df["path"]) == ["../elsewhere.wav", "in.wav"]  # the absolute line is in.wav again: one row

    out = tmp_path / "out"
    proc = run_job("featurize", m, "--out", out, "--variants", "0", "--jobs", "1")
    last = refused_naming(proc, "list.csv")
    assert "'../elsewhere.wav'" in last and "line 4" in last and "--allow-outside-paths" in last
    run_job("featurize", m, "--out", out, "--variants", "0", "--jobs", "1", "--allow-outside-paths", check=True)
    rows, _, _ = shards.read(out, with_features=False)
    assert set(rows["path"]) == {"../elsewhere.wav", "in.wav"}
