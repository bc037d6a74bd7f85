"""The synthetic corpus: deterministic, AudioMNIST-shaped, balanced, and labelled only by voice cues."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from voiceclf import synth

REPO_ROOT = Path(__file__).resolve().parents[2]
SR = 16000


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """10 speakers × 10 clips: enough clips that a chance loudness/gender association stays well below 75 %."""
    out = tmp_path_factory.mktemp("corpus")
    return out, synth.make_corpus(out, speakers=10, clips=10, seed=0)


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    synth.make_corpus(tmp_path / "a", 2, 3, seed=7)
    synth.make_corpus(tmp_path / "b", 2, 3, seed=7)
    synth.make_corpus(tmp_path / "c", 2, 3, seed=8)
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert len(a) == 2 * 3 + 1
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".wav"))


def test_a_speaker_does_not_depend_on_which_other_speakers_are_generated(tmp_path):
    synth.make_corpus(tmp_path / "all", 4, 2, seed=3)
    synth.make_corpus(tmp_path / "part", 2, 2, seed=3, first_speaker=3)
    whole, part = _files(tmp_path / "all"), _files(tmp_path / "part")
    wavs = [k for k in part if k.endswith(".wav")]
    assert sorted(wavs) == ["03/0_03_0.wav", "03/1_03_0.wav", "04/0_04_0.wav", "04/1_04_0.wav"]
    assert all(part[k] == whole[k] for k in wavs)


def test_adding_speakers_keeps_the_existing_metadata(tmp_path):
    synth.make_corpus(tmp_path, 2, 1)
    synth.make_corpus(tmp_path, 2, 1, first_speaker=3)
    meta = json.loads((tmp_path / synth.META_FILE).read_text(encoding="utf-8"))
    assert {k: v["gender"] for k, v in meta.items()} == {"01": "female", "02": "male", "03": "female", "04": "male"}


def test_layout_metadata_and_table(corpus):
    out, df = corpus
    assert list(df.columns) == ["path", "speaker", "label", "digit", "take"]
    assert len(df) == 100
    meta = json.loads((out / synth.META_FILE).read_text(encoding="utf-8"))
    assert sorted(meta) == [f"{i:02d}" for i in range(1, 11)]
    genders = [meta[s]["gender"] for s in sorted(meta)]
    assert genders == ["female", "male"] * 5
    assert all(e["accent"] == "synthetic" and 20 <= e["age"] <= 65 for e in meta.values())
    for row in df.itertuples(index=False):
        m = re.fullmatch(r"(\d\d)/(\d)_(\d\d)_(\d+)\.wav", row.path)
        assert m and m[1] == m[3] == row.speaker
        assert (int(m[2]), int(m[4])) == (row.digit, row.take)
        assert row.label == meta[row.speaker]["gender"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav")) == sorted(df["path"])
    info = sf.info(str(out / df["path"][0]))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (SR, 1, "PCM_16", "WAV")
    # 0.1–0.4 s of silence on each side of a 0.5–1.1 s utterance
    durations = [sf.info(str(out / p)).duration for p in df["path"]]
    assert 0.7 <= min(durations) and max(durations) <= 1.9


def test_the_metadata_file_is_the_one_the_corpus_reader_expects():
    from voiceclf.corpus import AUDIOMNIST_META

    assert synth.META_FILE == AUDIOMNIST_META


@pytest.mark.parametrize("speakers", [0, 1, 3])
def test_unbalanced_speaker_counts_are_refused(tmp_path, speakers):
    with pytest.raises(ValueError, match="even number >= 2"):
        synth.make_corpus(tmp_path, speakers, 1)


def test_cli_writes_a_corpus_and_refuses_bad_arguments(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "jobs.synth", *args], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)

    ok = cli("--out", str(tmp_path / "c"), "--speakers", "2", "--clips", "3", "--seed", "1", "--first-speaker", "5")
    assert ok.returncode == 0, ok.stderr
    assert "wrote 6 files, 2 speakers (1 female, 1 male)" in ok.stdout
    assert sorted(json.loads((tmp_path / "c" / synth.META_FILE).read_text())) == ["05", "06"]

    bad = cli("--out", str(tmp_path / "d"), "--speakers", "3")
    assert bad.returncode == 2
    assert "--speakers must be an even number" in bad.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "d").exists()


def test_median_pitch_lies_in_the_gender_range(corpus):
    out, df = corpus
    bounds = {"female": (160.0, 260.0), "male": (80.0, 160.0)}
    for speaker in ["01", "02", "03", "04"]:
        for path in df.loc[df["speaker"] == speaker, "path"][:2]:
            y, sr = sf.read(out / path, dtype="float32")
            f0, voiced, _ = librosa.pyin(y, fmin=60, fmax=400, sr=sr)
            label = df.loc[df["path"] == path, "label"].item()
            lo, hi = bounds[label]
            assert voiced.sum() >= 10, path
            assert lo <= np.median(f0[voiced]) <= hi, (path, label, np.median(f0[voiced]))


def test_loudness_alone_does_not_separate_genders(corpus):
    out, df = corpus
    level_db = np.array([10 * np.log10(np.mean(sf.read(out / p)[0] ** 2)) for p in df["path"]])
    male = (df["label"] == "male").to_numpy()
    assert np.ptp(level_db) >= 20  # clip levels really do vary widely
    above = level_db[None, :] >= level_db[:, None]  # row i: clips at or above threshold level_db[i]
    accuracy = (above == male).mean(axis=1)
    best = np.maximum(accuracy, 1 - accuracy).max()  # either side of the threshold may be "male"
    assert best < 0.75


def test_formant_scale_shifts_the_spectrum_up():
    def centroid(scale):
        rng = np.random.default_rng(5)
        voice = synth.speaker_voice("male", rng)
        y = synth.synth_utterance("male", rng, voice=voice, formant_scale=scale, duration_s=1.0)
        power = np.abs(np.fft.rfft(y)) ** 2
        return np.sum(np.fft.rfftfreq(y.size, 1 / SR) * power) / np.sum(power)

    assert centroid(1.2) > 1.1 * centroid(1.0)


def test_utterance_and_recording_shapes_and_levels():
    rng = np.random.default_rng(0)
    voice = synth.speaker_voice("female", rng)
    y = synth.synth_utterance("female", rng, voice=voice, duration_s=0.8)
    assert y.dtype == np.float32 and y.shape == (int(0.8 * SR),) and np.isfinite(y).all()
    assert 10 * np.log10(np.mean(y.astype(np.float64) ** 2)) == pytest.approx(voice["loudness_db"], abs=0.01)
    with pytest.raises(ValueError, match="gender"):
        synth.synth_utterance("male", rng, voice=voice)

    rec = synth.synth_recording("male", rng, duration_s=10.0)
    assert rec.dtype == np.float32 and rec.shape == (10 * SR,)
    frame_db = 10 * np.log10(np.mean(rec[: rec.size // 160 * 160].reshape(-1, 160).astype(np.float64) ** 2, axis=1))
    quiet = frame_db < frame_db.max() - 30
    assert 0.1 < quiet.mean() < 0.6  # pauses between utterances, but mostly speech
