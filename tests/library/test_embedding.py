"""The speaker_embedding feature set: the pretrained GE2E encoder from the installed wheel, on synthetic voices."""
import hashlib

import numpy as np
import pytest
import torch

from voiceclf import embedding, file_windows, synth, torch_file
from voiceclf.config import ENCODER_SHA256, ConfigError, FeatureConfig

CFG = FeatureConfig.for_feature_set("speaker_embedding")


def test_weights_come_from_the_installed_wheel_with_the_pinned_hash():
    path = embedding.weights_path()
    assert path.name == "pretrained.pt" and path.parent.name == "resemblyzer"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ENCODER_SHA256 == CFG.encoder_sha256
    enc = embedding.load_encoder(ENCODER_SHA256)
    assert enc.n_parameters == 1_423_616  # 3-layer LSTM 40→256 + linear 256→256
    assert embedding.load_encoder(ENCODER_SHA256) is enc  # read, hashed and built once per process, not per batch


class TorchEncoder(torch.nn.Module):
    """The encoder as torch modules (what embedding.py ran before it ran in numpy): the reference."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = torch.nn.Linear(256, 256)

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / torch.linalg.vector_norm(raw, dim=1, keepdim=True).clamp_min(1e-12)


def test_numpy_encoder_equals_torchs_lstm_on_the_same_weights():
    """The weights read without torch are torch.load's bit for bit; the numpy LSTM gives torch's embeddings."""
    import io

    data = embedding.weights_path().read_bytes()
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["model_state"]
    ref = TorchEncoder()
    ref.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))})
    mine = torch_file.read_legacy(data)["model_state"]
    assert sorted(mine) == sorted(state) and all(np.array_equal(mine[k], v.numpy()) for k, v in state.items())
    rng = np.random.default_rng(5)
    windows = [rng.random((7, 160, 40), dtype=np.float32) ** 4]  # noise-like mel power
    for gender in ("female", "male"):  # synthetic voices through the real mel
        y = synth.synth_utterance(gender, rng, duration_s=3.0).astype(np.float32)
        windows.append(embedding.mel_windows(y, CFG).features)
    t = np.arange(56000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.05 * np.sin(5 * t)))).astype(np.float32)
    windows.append(embedding.mel_windows(tone, CFG).features)  # a voice-like sweep through the real mel
    mels = np.concatenate(windows)
    assert len(mels) >= 9
    with torch.no_grad():
        expected = ref(torch.from_numpy(mels)).numpy()
    got = embedding.embed(mels, CFG, batch_size=4)  # batches of 4 and a remainder
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert got.dtype == np.float32 and np.abs(got - expected).max() < 2e-6


def test_a_weights_file_naming_other_code_is_refused():
    """Only a float32 state dict's three names may appear in the file: any other name is refused, never imported."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    data = b"".join(pickle.dumps(x, protocol=2) for x in (torch_file.MAGIC, torch_file.PROTOCOL, {}, {"model_state": Evil()}, []))
    with pytest.raises(ValueError, match=r"print is not allowed"):
        torch_file.read_legacy(data)
    with pytest.raises(ValueError, match="magic number"):
        torch_file.read_legacy(pickle.dumps(1, protocol=2) * 5)


def test_another_encoder_is_refused():
    with pytest.raises(embedding.EncoderError, match="sha256"):
        embedding.load_encoder("0" * 64)
    with pytest.raises(ConfigError, match="encoder_sha256"):
        FeatureConfig(feature_set="speaker_embedding", window_s=1.6, hop_s=0.8)


def test_a_jobs_parent_checks_the_encoder_without_torch_or_librosa():
    """featurize and score check the encoder's hash before their workers start; only the workers run it."""
    import subprocess
    import sys

    from conftest import REPO

    code = ("import sys; from voiceclf import extract; from voiceclf.config import FeatureConfig; "
            "extract.check_weights(FeatureConfig.for_feature_set('speaker_embedding')); "
            "print(sorted(m for m in ('torch', 'librosa') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]
    with pytest.raises(embedding.EncoderError, match="sha256"):
        embedding.check("0" * 64)


def test_config_of_the_embedding_set():
    assert CFG.shape == (256,) and CFG.family == "embedding_head" and CFG.window_s == 1.6
    assert FeatureConfig.from_json(CFG.to_json()) == CFG
    assert FeatureConfig().family == "cnn" and FeatureConfig().encoder_sha256 == ""


def test_embeddings_are_unit_vectors_and_tell_speakers_apart(tmp_path):
    synth.make_corpus(tmp_path, speakers=4, clips=4, seed=3)
    items = [file_windows.Item(path=p.relative_to(tmp_path).as_posix(), source=str(tmp_path)) for p in sorted(tmp_path.glob("*/*.wav"))]
    results = file_windows.featurize_batch(items, CFG)
    assert all(r.error is None and r.windows.features.shape[1:] == (256,) for r in results)
    emb = {}
    for r in results:
        v = r.windows.features.mean(axis=0)
        emb.setdefault(r.item.path.split("/")[0], []).append(v / np.linalg.norm(v))
        np.testing.assert_allclose(np.linalg.norm(r.windows.features, axis=1), 1.0, rtol=1e-5)
    speakers = sorted(emb)
    same = np.mean([emb[s][i] @ emb[s][j] for s in speakers for i in range(4) for j in range(i + 1, 4)])
    other = np.mean([a @ b for s in speakers for t in speakers if s < t for a in emb[s] for b in emb[t]])
    assert same > other + 0.05, (same, other)


def test_batched_encoding_equals_one_file_at_a_time(tmp_path):
    synth.make_corpus(tmp_path, speakers=2, clips=3, seed=4)
    items = [file_windows.Item(path=p.relative_to(tmp_path).as_posix(), source=str(tmp_path)) for p in sorted(tmp_path.glob("*/*.wav"))]
    together = file_windows.featurize_batch(items, CFG)
    alone = [file_windows.featurize_batch([it], CFG)[0] for it in items]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.windows.features, b.windows.features, atol=1e-5)


def test_windows_cover_the_speech_like_the_cnn_windows():
    y = np.concatenate([np.zeros(8000), 0.5 * np.sin(2 * np.pi * 150 * np.arange(48000) / 16000), np.zeros(8000)]).astype(np.float32)
    w = embedding.mel_windows(y, CFG)
    assert w.features.shape == (2, 160, 40)  # 3 s of speech: 1.6-s windows at 0 and 0.8 s (the rest is under a window)
    np.testing.assert_allclose(w.offsets_s, [0.5, 1.3], atol=0.02)
    short = embedding.mel_windows(y[:16000], CFG)  # 0.5 s of speech: one padded window
    assert len(short) == 1 and short.speech_s[0] < 1.0
    assert len(embedding.mel_windows(np.zeros(16000, np.float32), CFG)) == 0


def test_level_does_not_change_the_embedding():
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    y = (0.3 * np.sin(2 * np.pi * 140 * t * (1 + 0.05 * np.sin(3 * t))) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    a = embedding.embed(embedding.mel_windows(y, CFG).features, CFG)
    b = embedding.embed(embedding.mel_windows(0.1 * y, CFG).features, CFG)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert torch.get_num_threads() >= 1


def test_a_worker_embeds_without_torch(tmp_path):
    """The featurize/score worker's whole path (decode, gate, mel, encoder) runs without importing torch (~510 MB)."""
    import subprocess
    import sys

    from conftest import REPO

    synth.make_corpus(tmp_path, speakers=2, clips=1, seed=5)
    code = ("import sys; from pathlib import Path; from voiceclf import file_windows, parallel; from voiceclf.config import FeatureConfig\n"
            f"root = Path({str(tmp_path)!r}); cfg = FeatureConfig.for_feature_set('speaker_embedding')\n"
            "[__import__(m) for m in parallel.WORKER_PRELOAD[cfg.family]]\n"
            "items = [file_windows.Item(path=p.relative_to(root).as_posix(), source=str(root)) for p in sorted(root.glob('*/*.wav'))]\n"
            "res = file_windows.featurize_batch(items, cfg, variants=1)\n"
            "print(len(res), all(r.windows is not None and r.windows.features.shape[1:] == (256,) for r in res), 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["2", "True", "False"], proc.stdout
