"""voiceclf.corpus: each layout yields the same table; every inconsistency is a CorpusError
that names what is wrong; no file silently disappears."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from voiceclf import corpus
from voiceclf.corpus import CorpusError


def touch(path, content: bytes = b"x") -> None:
    """Corpus discovery never decodes, so most files can hold any bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def real_wav(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.3 * np.sin(2 * np.pi * 150 * np.arange(800) / 16000), 16000)


def as_records(df: pd.DataFrame, cols=("path", "speaker", "label")) -> list[tuple]:
    return [tuple(r) for r in df[list(cols)].itertuples(index=False)]


# -- AudioMNIST -------------------------------------------------------------------------
def audiomnist(root, meta: dict, files: list[str]):
    for f in files:
        touch(root / f)
    (root / corpus.AUDIOMNIST_META).write_text(json.dumps(meta))
    return root


def test_audiomnist(tmp_path):
    root = audiomnist(
        tmp_path / "am",
        {"01": {"gender": "male", "age": 30}, "02": {"gender": " Female "}, "99": {"gender": "male"}},
        ["02/3_02_5.wav", "01/0_01_1.wav", "01/0_01_0.wav", "01/notes.txt", "01/.DS_Store"],
    )
    (root / "README.md").write_text("top-level files are not part of the corpus")
    df = corpus.discover(root)
    assert list(df.columns[:5]) == ["path", "source", "corpus", "speaker", "label"]
    assert as_records(df, ("path", "speaker", "label", "digit", "take")) == [
        ("01/.DS_Store", "01", "male", pd.NA, pd.NA),
        ("01/0_01_0.wav", "01", "male", 0, 0),
        ("01/0_01_1.wav", "01", "male", 0, 1),
        ("01/notes.txt", "01", "male", pd.NA, pd.NA),  # non-audio kept: reported later
        ("02/3_02_5.wav", "02", "female", 3, 5),
    ]
    assert str(df["digit"].dtype) == "Int64" and str(df["take"].dtype) == "Int64"
    assert set(df["source"]) == {str(root)}


def test_audiomnist_missing_meta_entry(tmp_path):
    root = audiomnist(tmp_path, {"01": {"gender": "male"}}, ["01/0_01_0.wav", "07/0_07_0.wav"])
    with pytest.raises(CorpusError) as ei:
        corpus.discover(root)
    msg = str(ei.value)
    assert "'07'" in msg and "'01'" not in msg and corpus.AUDIOMNIST_META in msg


@pytest.mark.parametrize("gender", ["unknown", "", None, 3])
def test_audiomnist_unknown_gender(tmp_path, gender):
    root = audiomnist(tmp_path, {"01": {"gender": "m"}, "02": {"gender": gender}}, ["01/a.wav", "02/b.wav"])
    with pytest.raises(CorpusError) as ei:
        corpus.discover(root)
    msg = str(ei.value)
    assert "'02'" in msg and repr(gender) in msg


def test_audiomnist_bad_meta_json(tmp_path):
    touch(tmp_path / "01" / "a.wav")
    (tmp_path / corpus.AUDIOMNIST_META).write_text("{not json")
    with pytest.raises(CorpusError, match=corpus.AUDIOMNIST_META):
        corpus.discover(tmp_path)


# -- label folders ----------------------------------------------------------------------
def test_label_folders_with_speakers(tmp_path):
    for f in ["female/a.wav", "female/spk1/b.wav", "female/spk1/deep/c.flac",
              "male/spk2/d.wav", "male/.hidden.wav", "male/e.txt"]:
        touch(tmp_path / f)
    (tmp_path / "README.txt").write_text("ignored: not audio, not in a label folder")
    df = corpus.discover(tmp_path)
    assert as_records(df) == [
        ("female/a.wav", None, "female"),
        ("female/spk1/b.wav", "spk1", "female"),
        ("female/spk1/deep/c.flac", "spk1", "female"),
        ("male/.hidden.wav", None, "male"),
        ("male/e.txt", None, "male"),
        ("male/spk2/d.wav", "spk2", "male"),
    ]
    assert df.loc[0, "speaker"] is None  # a real None, not NaN
    assert set(df["source"]) == {str(tmp_path)}
    assert "digit" not in df.columns


def test_label_folders_only_one_label(tmp_path):
    touch(tmp_path / "male" / "x.wav")
    assert as_records(corpus.discover(tmp_path)) == [("male/x.wav", None, "male")]


def test_unknown_label_folder(tmp_path):
    for f in ["female/a.wav", "male/b.wav", "kids/c.wav", "other/d.wav"]:
        touch(tmp_path / f)
    with pytest.raises(CorpusError, match="unknown label") as ei:
        corpus.discover(tmp_path)
    assert "'kids'" in str(ei.value) and "'other'" in str(ei.value)


def test_audio_outside_label_folders_refused(tmp_path):
    touch(tmp_path / "female" / "a.wav")
    real_wav(tmp_path / "stray.wav")
    with pytest.raises(CorpusError, match="stray.wav"):
        corpus.discover(tmp_path)


# -- manifest ---------------------------------------------------------------------------
def test_manifest(tmp_path):
    for f in ["clips/a.wav", "clips/sub/b.wav", "c.wav"]:
        touch(tmp_path / f)
    m = tmp_path / "list.csv"
    m.write_text("path,label,speaker\nclips/sub/b.wav,F,s1\nc.wav,Male,\n\nclips/a.wav, woman ,s2\n")
    df = corpus.discover(m)
    assert as_records(df) == [
        ("c.wav", None, "male"),
        ("clips/a.wav", "s2", "female"),
        ("clips/sub/b.wav", "s1", "female"),
    ]
    assert set(df["source"]) == {str(tmp_path)}


def test_manifest_relative_to_its_own_folder(tmp_path, monkeypatch):
    touch(tmp_path / "data" / "x.wav")
    (tmp_path / "data" / "m.csv").write_text("path,label\nx.wav,m\n")
    monkeypatch.chdir(tmp_path)  # relative src and paths resolve against the manifest folder
    df = corpus.discover("data/m.csv")
    assert as_records(df, ("path", "source", "label")) == [("x.wav", str(tmp_path / "data"), "male")]


def test_manifest_missing_files_with_line_numbers(tmp_path):
    touch(tmp_path / "ok.wav")
    (tmp_path / "sub").mkdir()
    m = tmp_path / "m.csv"
    m.write_text("path,label\nok.wav,female\ngone.wav,male\nsub,male\n")
    with pytest.raises(CorpusError, match="missing file") as ei:
        corpus.discover(m)
    msg = str(ei.value)
    assert "line 3: 'gone.wav'" in msg and "line 4: 'sub'" in msg and "ok.wav" not in msg


def test_manifest_unknown_label_with_line_numbers(tmp_path):
    for f in "abcdefgh":
        touch(tmp_path / f"{f}.wav")
    rows = "\n".join(f"{f}.wav,child" for f in "abcdefg")
    m = tmp_path / "m.csv"
    m.write_text(f"path,label\nh.wav,male\n{rows}\n")
    with pytest.raises(CorpusError, match="unknown label") as ei:
        corpus.discover(m)
    msg = str(ei.value)
    assert "line 3: 'child'" in msg and "and 2 more" in msg  # only the first few are listed


@pytest.mark.parametrize("header", ["file,label", "path,gender", "path"])
def test_manifest_missing_column(tmp_path, header):
    touch(tmp_path / "a.wav")
    m = tmp_path / "m.csv"
    m.write_text(f"{header}\na.wav{',male' if ',' in header else ''}\n")
    with pytest.raises(CorpusError, match="missing column"):
        corpus.discover(m)


def test_manifest_without_labels_when_not_required(tmp_path):
    touch(tmp_path / "a.wav")
    m = tmp_path / "m.csv"
    m.write_text("path\na.wav\n")
    assert as_records(corpus.discover(m, require_labels=False)) == [("a.wav", None, None)]


# -- unlabelled, missing, empty ---------------------------------------------------------
def test_unlabelled_folder(tmp_path):
    for f in ["x.wav", "deep/y.mp3", ".hidden"]:
        touch(tmp_path / f)
    with pytest.raises(CorpusError, match="AudioMNIST.*female.*manifest"):
        corpus.discover(tmp_path)
    df = corpus.discover(tmp_path, require_labels=False)
    assert as_records(df) == [(".hidden", None, None), ("deep/y.mp3", None, None), ("x.wav", None, None)]
    assert df["label"].isna().all() and all(v is None for v in df["label"])


def test_missing_src(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        corpus.discover(tmp_path / "nowhere")


def test_empty_corpus(tmp_path):
    (tmp_path / "female").mkdir()
    with pytest.raises(CorpusError, match="no files"):
        corpus.discover(tmp_path)
    with pytest.raises(CorpusError, match="no files"):
        corpus.discover(tmp_path / "female", require_labels=False)


def test_non_csv_file_refused(tmp_path):
    touch(tmp_path / "a.wav")
    with pytest.raises(CorpusError, match="manifest"):
        corpus.discover(tmp_path / "a.wav")


# -- list_files -------------------------------------------------------------------------
def test_list_files_hidden_sorted_recursive(tmp_path):
    for f in ["b.wav", ".hidden.wav", "a/z.txt", "a/.x/y.wav", "A.wav"]:
        touch(tmp_path / f)
    (tmp_path / "empty_dir").mkdir()
    files = corpus.list_files(tmp_path)
    assert files == sorted(files)
    assert files == [".hidden.wav", "A.wav", "a/.x/y.wav", "a/z.txt", "b.wav"]


def test_list_files_errors(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        corpus.list_files(tmp_path / "nope")
    touch(tmp_path / "f.wav")
    with pytest.raises(CorpusError, match="not a folder"):
        corpus.list_files(tmp_path / "f.wav")
