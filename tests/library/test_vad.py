"""Speech detection (issue 13.11): what is not a voice is no_speech, quiet or noisy speech stays ok."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import run_job
from voiceclf import audio, features, file_windows, synth, vad
from voiceclf.config import ConfigError, FeatureConfig

SR = 16000


def _level(y: np.ndarray, rms_dbfs: float) -> np.ndarray:
    return (y * 10 ** (rms_dbfs / 20) / np.sqrt(np.mean(np.square(y, dtype=np.float64)))).astype(np.float32)


def _speech(seed: int = 0, gender: str = "male", seconds: float = 2.5) -> np.ndarray:
    return synth.synth_recording(gender, np.random.default_rng(seed), duration_s=seconds)


def _inputs(folder):
    """File name → expected status: non-voice that energy alone took for speech, and speech that must stay."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    n = int(2.5 * SR)
    sf.write(folder / "white_noise.wav", _level(rng.standard_normal(n), -20), SR, subtype="PCM_16")
    sf.write(folder / "random_bytes.wav", np.zeros(n, np.float32), SR, subtype="PCM_16")
    raw = (folder / "random_bytes.wav").read_bytes()
    (folder / "random_bytes.wav").write_bytes(raw[: len(raw) - 2 * n] + rng.bytes(2 * n))  # a valid header, then noise
    sf.write(folder / "quiet_speech.wav", _level(_speech(1, "female"), -45), SR, subtype="PCM_16")
    noise = _level(rng.standard_normal(n), -25)  # 5 dB below the speech
    sf.write(folder / "noisy_speech.wav", np.clip(_level(_speech(2, "male"), -20) + noise, -1, 1), SR, subtype="PCM_16")
    return {"white_noise.wav": "no_speech", "random_bytes.wav": "no_speech", "quiet_speech.wav": "ok", "noisy_speech.wav": "ok"}


def test_noise_is_not_speech_and_the_reason_says_so():
    cfg = FeatureConfig()
    noise = audio.clean(_level(np.random.default_rng(0).standard_normal(3 * SR), -20), cfg)
    why = vad.why_not_speech(noise, cfg)
    assert why is not None and why.startswith("no voiced speech: Silero VAD found 0.000 s of speech in 3.0 s")
    assert vad.why_not_speech(noise, dataclasses.replace(cfg, vad_min_speech_s=0.0)) is None  # 0: off


def test_quiet_and_noisy_speech_are_speech():
    cfg = FeatureConfig()
    speech = _speech(4)
    assert vad.why_not_speech(audio.clean(_level(speech, -50), cfg), cfg) is None
    noisy = _level(speech, -20) + _level(np.random.default_rng(1).standard_normal(len(speech)), -20)  # 0 dB SNR
    assert vad.why_not_speech(audio.clean(noisy, cfg), cfg) is None


def test_blocks_give_the_one_pass_probabilities():
    y = audio.clean(_speech(5, "female", 3.0), FeatureConfig())
    p = vad.speech_probabilities(y)
    assert len(p) == vad.n_chunks(len(y)) and 0 < p.min() and p.max() < 1
    full = float((p >= 0.5).sum() * vad.CHUNK / SR)
    for block in (1, 7, 32, 1000):
        assert vad.speech_seconds(y, block=block) == pytest.approx(full)
    assert vad.speech_seconds(y, enough_s=0.1) >= 0.1  # stops early, having found enough
    assert vad.speech_seconds(np.zeros(0, np.float32)) == 0.0


def test_other_weights_are_refused():
    with pytest.raises(vad.VadError, match="sha256"):
        vad.load_vad("0" * 64)
    with pytest.raises(ConfigError, match="vad_sha256"):
        FeatureConfig(vad_sha256="not-a-hash")
    with pytest.raises(ConfigError, match="vad_min_speech_s"):
        FeatureConfig(vad_min_speech_s=-1.0)
    with pytest.raises(ConfigError, match="vad_threshold"):
        FeatureConfig(vad_threshold=1.0)
    old = {k: v for k, v in FeatureConfig().to_dict().items() if not k.startswith("vad_")}
    assert FeatureConfig.from_dict(old) == FeatureConfig()  # a config from before the detector gets it


@pytest.mark.parametrize("feature_set", ["mfcc_pitch", "speaker_embedding"])
def test_featurize_marks_non_voice_no_speech(feature_set, tmp_path):
    expected = _inputs(tmp_path)
    cfg = FeatureConfig.for_feature_set(feature_set)
    results = file_windows.featurize_batch([file_windows.Item(name, str(tmp_path)) for name in sorted(expected)], cfg)
    got = {r.item.path: ("ok" if r.error is None else r.error) for r in results}
    assert got == {k: expected[k] for k in sorted(expected)}
    for r in results:
        if r.error:
            assert "no voiced speech: Silero VAD found" in r.message and r.n_windows == 0
        else:
            assert r.n_windows >= 1 and r.windows.features.shape[1:] == cfg.shape


def test_score_reports_non_voice_as_no_speech(champion, tmp_path):
    expected = _inputs(tmp_path / "in")
    out = tmp_path / "report.csv"
    run_job("score", tmp_path / "in", "--out", out, "--jobs", "1", env={"MLFLOW_TRACKING_URI": champion}, check=True)
    report = pd.read_csv(out, keep_default_na=False)
    got = {p.rsplit("/", 1)[-1]: s for p, s in zip(report["path"], report["status"])}
    assert got == expected
    rejected = report[report["status"] == "no_speech"]
    assert rejected["error"].str.contains("no voiced speech: Silero VAD found").all()
    assert (rejected["label"] == "").all() and (rejected["windows"] == 0).all()


def _one_pass_seconds(y: np.ndarray, cfg: FeatureConfig, start: int) -> float:
    """The gate's count the plain way: the model over every chunk from the first loud region's lead on, in one pass from a
    fresh state, then (if too little) over the lead-in, again from a fresh state; chunks counted until enough."""
    model, need = vad.load_vad(), cfg.vad_min_speech_s * SR / vad.CHUNK
    first = min(max(0, start // vad.CHUNK - vad.LEAD_CHUNKS), vad.n_chunks(len(y)) - 1)
    found = 0
    for a, count in ((first, None), (0, first)):
        if count == 0 or found >= need:
            break
        speech = int((model(vad.chunk_spectra(y, a, count))[0] >= cfg.vad_threshold).sum())
        found += min(speech, int(np.ceil(need - found)))  # the gate stops at the chunk that makes it enough
    return found * vad.CHUNK / SR


def test_many_recordings_at_once_get_the_verdicts_of_one_at_a_time():
    """The batched gate a worker runs (rounds in lockstep, each recording from its first loud region) says what the
    one-file paths say, message included: the streamed gate from the start, and one plain pass per range otherwise."""
    cfg = FeatureConfig()
    rng = np.random.default_rng(7)
    ys = [audio.clean(_speech(s, g, secs), cfg) for s, g, secs in [(1, "male", 1.2), (2, "female", 3.0), (3, "male", 0.4)]]
    ys += [audio.clean(_level(rng.standard_normal(int(2.2 * SR)), -20), cfg), np.zeros(0, np.float32), np.zeros(700, np.float32)]
    ys += [np.concatenate([np.zeros(int(1.5 * SR), np.float32), ys[1]])]  # speech after 1.5 s of silence: several rounds
    one = [vad.why_not_speech_in([y], cfg) for y in ys]  # speech_seconds' blocks, from the first chunk
    assert one[0] is None and one[3] is not None
    for block in (1, 5, vad.MANY_BLOCK, 200):
        assert vad.why_not_speech_many(ys, cfg, block=block) == one
    assert vad.why_not_speech_many(ys, dataclasses.replace(cfg, vad_min_speech_s=0.0)) == [None] * len(ys)
    starts = [0, 8000, 0, 30000, 0, 0, int(1.5 * SR)]  # where each one's first loud region begins
    seconds = [_one_pass_seconds(y, cfg, st) for y, st in zip(ys, starts)]
    one = [None if s >= cfg.vad_min_speech_s else vad._not_speech(s, len(y), cfg) for s, y in zip(seconds, ys)]
    assert one[0] is None and one[3] is not None and one[6] is None
    for block in (1, 5, vad.MANY_BLOCK, 200):
        assert vad.why_not_speech_many(ys, cfg, starts, block=block) == one
    assert [vad.why_not_speech(y, cfg, st) for y, st in zip(ys, starts)] == one


def test_the_gate_reads_from_the_first_loud_region_and_the_lead_in_only_when_needed(monkeypatch):
    """Speech after 3 s of silence costs the chunks around the words, not the silence; a recording whose only voice
    lies before its first loud region (quiet speech, then a loud tone) is still speech: the lead-in is read last."""
    cfg = FeatureConfig()
    read = []
    real = vad._chunks
    monkeypatch.setattr(vad, "_chunks", lambda y, first=0, count=None: read.append((len(y), first)) or real(y, first, count))
    speech = audio.clean(np.concatenate([np.zeros(3 * SR, np.float32), _speech(6, "female", 2.0)]), cfg)
    [start] = [int(iv[0]) for iv in features.voiced_intervals(speech, cfg)[:1]]
    assert start >= 3 * SR - cfg.n_fft * 2
    assert vad.why_not_speech(speech, cfg, start) is None
    assert min(first for _, first in read) == start // vad.CHUNK - vad.LEAD_CHUNKS > 80  # chunk 0 never read
    read.clear()
    t = np.arange(SR) / SR
    tone = (0.9 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    quiet_then_tone = np.concatenate([_level(_speech(7, "male", 2.0), -45), np.zeros(SR // 2, np.float32), tone])
    y = audio.clean(quiet_then_tone, cfg)
    [loud] = features.voiced_intervals(y, cfg)  # the tone alone: the speech is more than top_db below it
    assert loud[0] > 2 * SR
    assert vad.why_not_speech(y, cfg, int(loud[0])) is None
    assert 0 in [first for _, first in read]  # found in the lead-in, read after the rest
    assert vad.why_not_speech(y[int(loud[0]) - 2000 :], cfg) is not None  # the tone alone is not speech


@pytest.mark.parametrize("n, first, count", [(100, 0, None), (513, 0, None), (16000, 0, 3), (24321, 2, 16), (24321, 40, 16)])
def test_chunk_spectra_are_the_models_reading_of_the_chunks(n, first, count):
    """Chunk i: samples [512 i - 64, 512 (i + 1)), zeros outside the waveform, reflected by 64 at its end (np.pad's
    "reflect"), four periodic-Hann frames of 256, hop 128: the reflection written out gives the same bits."""
    import scipy.fft

    y = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    count = vad.n_chunks(n) - first if count is None else count
    padded = np.concatenate([np.zeros(64, np.float32), y, np.zeros(count * 512 + first * 512, np.float32)])
    chunks = np.stack([padded[512 * i : 512 * i + 576] for i in range(first, first + count)])
    chunks = np.pad(chunks, ((0, 0), (0, 64)), mode="reflect")
    frames = np.stack([chunks[:, 128 * j : 128 * j + 256] for j in range(4)], axis=1)
    want = np.abs(scipy.fft.rfft(frames * vad._hann(), axis=-1)).transpose(0, 2, 1)
    np.testing.assert_array_equal(vad.chunk_spectra(y, first, count), want)


def test_weights_not_installed_are_one_error_class_for_detector_and_encoder(monkeypatch):
    """Both pinned weights say "not installed" with pinned.WeightsMissing (one class), which the jobs turn into
    `make setup`; a wrong hash stays the module's own error, a pinned.WeightsError too."""
    from voiceclf import embedding, pinned

    assert pinned.in_wheel("no-such-distribution", "x.bin") is None
    monkeypatch.setattr(vad, "in_wheel", lambda dist, rel: None)
    with pytest.raises(pinned.WeightsMissing, match="Silero VAD weights are not installed") as vad_missing:
        vad.weights_path()
    monkeypatch.setattr(embedding, "in_wheel", lambda dist, rel: None)
    monkeypatch.setattr(embedding.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(pinned.WeightsMissing, match="speaker encoder weights are not installed") as enc_missing:
        embedding.weights_path()
    assert vad_missing.value.missing == enc_missing.value.missing == "weights"
    assert issubclass(vad.VadError, pinned.WeightsError) and issubclass(embedding.EncoderError, pinned.WeightsError)
    assert not hasattr(vad, "WeightsMissing") and not hasattr(embedding, "WeightsMissing")
