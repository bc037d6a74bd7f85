"""Long recordings: streamed in blocks, bounded memory per worker, the same windows as the whole-file path."""
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from voiceclf import audio, file_windows, streaming, synth
from voiceclf.config import FeatureConfig

#: Issue 13, item 15: a worker's peak RSS on a file of any length (a CNN worker; before streaming a
#: 20-minute file took 1.8 GB).
WORKER_PEAK_BYTES = 500 * 2**20


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    """150 s of one synthetic speaker: above streaming.STREAM_ABOVE_S, short enough to decode whole for comparison."""
    p = tmp_path_factory.mktemp("long") / "long150.wav"
    synth.write_long_recording(p, "male", 150.0, seed=1)
    return p


@pytest.mark.parametrize("feature_set", ["mfcc_pitch", "mfcc_deltas", "speaker_embedding"])
def test_streamed_windows_equal_the_whole_file_path(long_wav, feature_set):
    cfg = FeatureConfig.for_feature_set(feature_set)
    assert streaming.is_long(long_wav) and streaming.STREAM_ABOVE_S < 150
    whole = audio.load(long_wav, cfg)
    ref = file_windows.windows_of(whole.samples, cfg)
    got, survey = streaming.windows(long_wav, cfg, block_s=7.3)  # blocks that cut frames and windows anywhere
    assert survey.duration_s == whole.duration_s and survey.source_sample_rate == whole.source_sample_rate
    assert len(got) == len(ref) > 100
    np.testing.assert_array_equal(got.offsets_s, ref.offsets_s)
    np.testing.assert_array_equal(got.speech_s, ref.speech_s)
    np.testing.assert_allclose(got.features, ref.features, rtol=0, atol=1e-4 * np.abs(ref.features).max())
    # past the cap: an evenly spread subset, each window as in the whole file except where a log spectrum sits
    # on its 80-dB floor, which is relative to the loudest bin of the stretches computed (module docstring)
    sparse, _ = streaming.windows(long_wav, cfg, max_windows=40)
    keep = streaming.spread(len(ref), 40)
    assert len(sparse) == 40 and keep[0] == 0 and keep[-1] == len(ref) - 1
    np.testing.assert_array_equal(sparse.offsets_s, ref.offsets_s[keep])
    close = np.isclose(sparse.features, ref.features[keep], rtol=0, atol=1e-4 * np.abs(ref.features).max())
    assert close.mean() > 0.99


def test_streamed_silence_and_a_lone_blip(tmp_path):
    import soundfile as sf

    cfg = FeatureConfig()
    n = int((streaming.STREAM_ABOVE_S + 10) * 16000)
    sf.write(tmp_path / "silent.wav", np.zeros(n, np.float32), 16000, subtype="PCM_16")
    assert len(streaming.windows(tmp_path / "silent.wav", cfg)[0]) == 0
    y = np.zeros(n, np.float32)
    y[16000 * 70 : 16000 * 70 + 6400] = synth.synth_utterance("male", np.random.default_rng(0), duration_s=0.4)
    sf.write(tmp_path / "blip.wav", y, 16000, subtype="FLOAT")
    got, _ = streaming.windows(tmp_path / "blip.wav", cfg)
    ref = file_windows.windows_of(audio.load(tmp_path / "blip.wav", cfg).samples, cfg)  # one window, the blip padded into it
    assert len(got) == len(ref) == 1
    np.testing.assert_allclose(got.features, ref.features, atol=1e-4)


@pytest.mark.parametrize("big", [False, True])
def test_a_long_recording_is_streamed_whatever_its_file_size(long_wav, tmp_path, monkeypatch, big):
    """A file up to file_windows.READ_WHOLE_BYTES is read whole and its header is read by the handle that decodes it; a
    bigger one's header is read first. Either way a recording above STREAM_ABOVE_S goes to the streaming path, and a
    shorter one does not: 150 s of voice in a FLAC of a few MB, and 10 s of it."""
    import soundfile as sf

    y, sr = sf.read(long_wav, dtype="float32")
    sf.write(tmp_path / "long.flac", y, sr, format="FLAC")
    sf.write(tmp_path / "short.flac", y[: 10 * sr], sr, format="FLAC")
    assert (tmp_path / "long.flac").stat().st_size < file_windows.READ_WHOLE_BYTES
    if big:
        monkeypatch.setattr(file_windows, "READ_WHOLE_BYTES", 0)
    streamed = []
    real = file_windows._featurize_long
    monkeypatch.setattr(file_windows, "_featurize_long", lambda item, cfg, *rest: streamed.append(item.path) or real(item, cfg, *rest))
    items = [file_windows.Item(path=name, source=str(tmp_path)) for name in ("long.flac", "short.flac")]
    long, short = file_windows.featurize_batch(items, FeatureConfig())
    assert streamed == ["long.flac"]
    assert long.error is None and long.duration_s == pytest.approx(150.0) and long.n_windows > 100
    assert short.error is None and short.duration_s == pytest.approx(10.0) and short.n_windows > 5
    assert long.item.sha256 == file_windows.sha256_file(str(tmp_path / "long.flac"))


def _worker_peak_rss(proc: subprocess.Popen) -> int:
    """Largest RSS any child (a joblib worker) of ``proc`` reached while it ran, in bytes."""
    import psutil

    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            children = root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for c in children:
            try:
                peak = max(peak, c.memory_info().rss)
            except psutil.Error:
                pass
        time.sleep(0.05)
    return peak


def test_a_20_minute_file_scores_in_bounded_worker_memory(champion, tmp_path):
    pytest.importorskip("psutil")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    synth.write_long_recording(inbox / "meeting_20min.wav", "female", 20 * 60.0, seed=4, distinct_blocks=4)
    out = tmp_path / "report.csv"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.score", str(inbox), "--out", str(out), "--jobs", "2"], cwd=REPO,
                            env={**__import__("os").environ, "MLFLOW_TRACKING_URI": champion}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = _worker_peak_rss(proc)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    row = pd.read_csv(out, keep_default_na=False).iloc[0]
    assert row["status"] == "ok" and row["label"] == "female", row.to_dict()
    assert row["duration_s"] == pytest.approx(1200.0)
    assert row["windows"] > streaming.MAX_WINDOWS  # every window of its speech (~1,600): score's turns cover all of it
    assert row["female_share"] > 0.9 and row["female_s"] > 600
    assert 0 < peak < WORKER_PEAK_BYTES, f"worker peak RSS {peak / 2**20:.0f} MiB"


def test_a_long_noise_file_is_no_speech_and_a_long_voice_is_kept(long_wav, tmp_path):
    """The speech gate reads a streamed file's blocks too: energy alone would call 150 s of noise speech."""
    import soundfile as sf

    noise = tmp_path / "noise150.wav"
    with sf.SoundFile(noise, "w", 16000, 1, "PCM_16") as f:
        rng = np.random.default_rng(3)
        for _ in range(15):
            f.write((0.2 * rng.standard_normal(160000)).astype(np.float32))
    cfg = FeatureConfig()
    [gone] = file_windows.featurize_batch([file_windows.Item(path="noise150.wav", source=str(tmp_path))], cfg)
    assert gone.error == "no_speech" and "Silero VAD found" in gone.message and gone.n_windows == 0
    [kept] = file_windows.featurize_batch([file_windows.Item(path=long_wav.name, source=str(long_wav.parent))], cfg)
    assert kept.error is None and kept.n_windows > 100


def test_streamed_embeddings_equal_the_whole_file_path(long_wav):
    """Scoring embeds a long file's mel windows group by group at the level the survey measured (nothing piles up):
    the embeddings are those of the whole-file path."""
    from voiceclf import embedding

    cfg = FeatureConfig.for_feature_set("speaker_embedding")
    ref = embedding.embed(file_windows.windows_of(audio.load(long_wav, cfg).samples, cfg).features, cfg)
    got, survey = streaming.windows(long_wav, cfg, block_s=7.3, max_windows=None, embed=True)
    assert got.features.shape == ref.shape and ref.shape[0] > 100
    np.testing.assert_allclose(got.features, ref, rtol=0, atol=1e-3)
    assert got.regions_s is not None and np.isclose(got.regions_s[-1, 1], survey.intervals[-1, 1] / 16000)
