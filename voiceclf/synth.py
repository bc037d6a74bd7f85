"""Synthetic labelled audio on disk, for tests and the demo: an AudioMNIST-layout corpus of short clips, and
recordings of hours, written from :mod:`voiceclf.synth_voice`'s voices.

Tests and the demo need labelled female/male audio without downloading a corpus. Everything here is
deterministic: a speaker's voice depends only on the seed and its id, a clip only on the seed, the speaker id
and the clip index. (The voices themselves — F0, vocal-tract length, voice quality — are described in
:mod:`voiceclf.synth_voice`; their functions are re-exported here.)
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from voiceclf.synth_voice import noise, speaker_voice, synth_recording, synth_utterance

__all__ = ["META_FILE", "speaker_gender", "speaker_voice", "synth_utterance", "synth_recording", "write_long_recording", "make_corpus"]

#: AudioMNIST's speaker metadata file name (the name ``voiceclf.corpus`` looks for).
META_FILE = "audioMNIST_meta.txt"


def speaker_gender(speaker_id: int) -> str:
    """Gender of synthetic speaker ``speaker_id``: odd ids are female, even ids male.

    Tying gender to the id (rather than to the position in a run) keeps a speaker's
    voice the same whichever range of ids a corpus covers, and any even number of
    consecutive ids is balanced.
    """
    return "female" if speaker_id % 2 else "male"


def write_long_recording(path: str | Path, gender: str, duration_s: float, *, seed: int = 0, sample_rate: int = 16000,
                         block_s: float = 60.0, distinct_blocks: int = 8) -> None:
    """Write a recording of hours to a 16-bit WAV one block at a time, in little memory.

    One speaker (drawn from ``seed``) talks through every block of ``block_s`` seconds, each a
    :func:`synth_recording`; only ``distinct_blocks`` of them are synthesised and the rest repeat
    them in turn, so a 10-hour file takes seconds, not minutes, to write.
    """
    voice = speaker_voice(gender, _rng(seed, 0))  # checks ``gender``
    total = int(round(duration_s * sample_rate))
    cache: dict[int, np.ndarray] = {}
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, subtype="PCM_16", format="WAV") as f:
        written, k = 0, 0
        while written < total:
            key = k % max(1, distinct_blocks)
            if key not in cache:
                y = synth_recording(gender, _rng(seed, 1, key), duration_s=block_s, sample_rate=sample_rate, voice=voice)
                cache[key] = np.clip(y, -0.98, 0.98)
            block = cache[key][: total - written]
            f.write(block)
            written += len(block)
            k += 1


def _rng(seed: int, *key: int) -> np.random.Generator:
    # A generator per (seed, key): a speaker's or clip's audio depends on nothing else.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _synth_clip(voice: dict, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """One corpus clip as int16: 0.1–0.4 s of near-silence, a 0.5–1.1 s utterance, 0.1–0.4 s more."""
    lead, tail = (int(s * sample_rate) for s in rng.uniform(0.1, 0.4, 2))
    utterance = synth_utterance(
        voice["gender"], rng, voice=voice, duration_s=rng.uniform(0.5, 1.1), sample_rate=sample_rate
    )
    # Overall level varies by clip (microphone distance, gain) over a range that dwarfs
    # the per-speaker loudness spread: -45..-15 dBFS speech RMS for both genders.
    gain_db = rng.uniform(-9.0, 9.0)
    y = np.concatenate([np.zeros(lead), utterance * 10 ** (gain_db / 20), np.zeros(tail)])
    speech_db = voice["loudness_db"] + gain_db
    y += noise(y.size, rng, speech_db - rng.uniform(40, 60))  # the room's noise floor
    if rng.random() < 0.2:  # occasionally an audible background (fan, traffic)
        y += noise(y.size, rng, speech_db - rng.uniform(15, 30))
    peak = np.max(np.abs(y))
    if peak > 0.98:  # rare at -15 dBFS RMS, but int16 would wrap around
        y *= 0.98 / peak
    return np.round(y * 32767).astype(np.int16)


def make_corpus(out_dir: str | Path, speakers: int, clips: int, seed: int = 0, *, first_speaker: int = 1,
                sample_rate: int = 16000) -> pd.DataFrame:
    """Write a synthetic corpus in the AudioMNIST layout.

    Files are ``<out_dir>/<NN>/<digit>_<NN>_<take>.wav`` (16-bit PCM mono WAV; ``NN``
    the zero-padded speaker id, ``digit = clip % 10``, ``take = clip // 10``) and
    ``<out_dir>/audioMNIST_meta.txt``, a JSON object ``{"NN": {"gender": ..., "age": ...,
    "accent": "synthetic", ...}}``. Speaker entries already in an existing metadata file
    are kept, so a corpus can be extended with ``first_speaker``.

    Speakers alternate female (odd id) and male (even id). Each clip holds one utterance
    between short stretches of near-silence, at a random level spanning ~30 dB regardless
    of gender. Output is deterministic: a speaker's voice depends only on ``seed`` and its
    id, a clip only on ``seed``, the speaker id and the clip index.

    Parameters
    ----------
    out_dir : str or Path
        Corpus root; created if missing.
    speakers : int
        Number of speakers, even and >= 2 (half female, half male).
    clips : int
        Clips per speaker, >= 1.
    seed : int
        Non-negative random seed.
    first_speaker : int
        Id of the first speaker (>= 1); ids run ``first_speaker .. first_speaker + speakers - 1``.
    sample_rate : int
        Samples per second of the WAV files.

    Returns
    -------
    pandas.DataFrame
        One row per clip: ``path`` (relative to ``out_dir``, posix), ``speaker`` ("NN"),
        ``label`` ("female"/"male"), ``digit`` and ``take`` (int).
    """
    _check_corpus_args(speakers, clips, first_speaker, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META_FILE
    meta = _read_meta(meta_path)
    rows = []
    for sid in range(first_speaker, first_speaker + speakers):
        nn = f"{sid:02d}"
        gender = speaker_gender(sid)
        voice = speaker_voice(gender, _rng(seed, sid, 0))
        meta[nn] = _speaker_meta(voice, seed)
        (out / nn).mkdir(exist_ok=True)
        for clip in range(clips):
            digit, take = clip % 10, clip // 10
            rel = f"{nn}/{digit}_{nn}_{take}.wav"
            _write_wav(out / rel, _synth_clip(voice, _rng(seed, sid, 1, clip), sample_rate), sample_rate)
            rows.append((rel, nn, gender, digit, take))
    meta_path.write_text(json.dumps(meta, indent=4, sort_keys=True) + "\n", encoding="utf-8")
    return pd.DataFrame(rows, columns=["path", "speaker", "label", "digit", "take"])


def _check_corpus_args(speakers: int, clips: int, first_speaker: int, seed: int) -> None:
    if speakers < 2 or speakers % 2:
        raise ValueError(f"speakers must be an even number >= 2 (half female, half male), got {speakers}")
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if first_speaker < 1:
        raise ValueError(f"first_speaker must be >= 1, got {first_speaker}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def _read_meta(meta_path: Path) -> dict:
    """The speakers of an existing metadata file (kept when a corpus is extended), or none."""
    try:
        return json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: existing metadata is not valid JSON ({e})") from None


def _speaker_meta(voice: dict, seed: int) -> dict:
    """A speaker's AudioMNIST metadata entry, with the synthetic voice's F0 and vocal-tract scale."""
    return {
        "accent": "synthetic",
        "age": voice["age"],
        "gender": voice["gender"],
        "origin": f"voiceclf.synth, seed {seed}",
        "recordingroom": "synthetic",
        "synth_f0_hz": round(voice["f0"], 1),
        "synth_formant_scale": round(voice["formant_scale"], 3),
    }


def _write_wav(path: Path, y: np.ndarray, sample_rate: int) -> None:
    # Encode in memory: writing to a path makes libsndfile fsync every file, 10x slower.
    wav = io.BytesIO()
    sf.write(wav, y, sample_rate, subtype="PCM_16", format="WAV")
    path.write_bytes(wav.getvalue())
