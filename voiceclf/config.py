"""FeatureConfig v1 and settings read from the environment.

The FeatureConfig is the one definition of how audio becomes model input. It is
stored in every shard's metadata and logged with every model, so scoring always
uses the config a model was trained with.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

#: Class order of the model card: index 0 is female, index 1 is male.
LABELS = ("female", "male")

#: The CNN's MFC images (3, 98, 12) and the pretrained speaker encoder's 256-d embeddings.
CNN_FEATURE_SETS = ("mfcc_pitch", "mfcc_deltas")
EMBEDDING_FEATURE_SETS = ("speaker_embedding",)
FEATURE_SETS = CNN_FEATURE_SETS + EMBEDDING_FEATURE_SETS

#: sha256 of the GE2E speaker encoder weights this code was written for (``resemblyzer/pretrained.pt``
#: of the Resemblyzer 0.1.4 wheel); a FeatureConfig names the encoder it used, and scoring refuses another.
ENCODER_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
EMBEDDING_DIM = 256

#: sha256 of the Silero VAD weights this code was written for (``silero_vad/data/silero_vad_16k.safetensors`` of
#: the silero-vad 6.2.3 wheel); a FeatureConfig names the detector it used, and featurize/score refuse another.
VAD_SHA256 = "c59271c284ae9c8335d795d60e0bfdb71aaaceec578d9bd9ffc1b8153c319ea1"

#: The repository root (the folder holding ``voiceclf/``); the embedded MLflow store lives under it.
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


class DataError(ValueError):
    """The data cannot be trained on (one gender only, too few speakers, no labels). Defined here, beside
    ConfigError, so a job can catch it without importing torch."""


class DeviceError(RuntimeError):
    """A torch device was asked for that this machine cannot give (``cuda`` without a CUDA device or build);
    raised by :func:`voiceclf.model.pick_device`, defined here so a job can catch it without importing torch."""


@dataclass(frozen=True)
class FeatureConfig:
    """Every parameter that turns a recording into model input: (3, 98, 12) MFC images per 1-s window for the
    CNN sets, or a 256-d speaker embedding per 1.6-s window for ``speaker_embedding`` (:attr:`shape`).

    Times are in seconds, frequencies in Hz, lengths in samples at ``sample_rate``.
    """

    version: int = 1
    feature_set: str = "mfcc_pitch"
    # decoding and clean-up
    sample_rate: int = 16000
    highpass_hz: float = 50.0  # DC and rumble removal (the reference data carries heavy rumble)
    highpass_order: int = 4
    max_duration_s: float = 3600.0  # audio.load refuses longer recordings; the jobs stream any recording above streaming.STREAM_ABOVE_S, whatever its length
    silence_peak_dbfs: float = -70.0  # a recording whose peak is below this holds no speech
    target_peak: float = 0.9  # level normalisation: peak amplitude after clean-up
    # voice activity and windowing
    top_db: float = 35.0  # voiced = within top_db of the loudest frame (librosa.effects.split)
    # speech detection (voiceclf.vad): a recording with less voice than this is no_speech; 0 turns it off.
    # Energy alone calls noise speech; Silero VAD rejects noise, tones and music and keeps quiet speech (bench/vad.py).
    vad_min_speech_s: float = 0.1
    vad_threshold: float = 0.3  # p(speech) of a 32-ms chunk for it to count as speech (Silero's own default: 0.5)
    vad_sha256: str = VAD_SHA256
    window_s: float = 1.0
    hop_s: float = 0.5
    # ch 0/1: the model card's MFC
    pre_emphasis: float = 0.97
    n_fft: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_mels: int = 40
    n_mfcc: int = 12
    lifter: int = 22
    delta_width: int = 9
    # ch 2 of mfcc_pitch: log power pooled into bands where voice fundamentals live
    pitch_n_fft: int = 2048
    pitch_fmin: float = 60.0
    pitch_fmax: float = 420.0
    # speaker_embedding: the encoder's weights (sha256) and the speech level it expects
    encoder_sha256: str = ""
    encoder_level_dbfs: float = -30.0  # RMS of the speech track before the encoder's mel (as it was trained)

    def __post_init__(self) -> None:
        def need(cond: bool, field: str, expected: str) -> None:
            if not cond:
                raise ConfigError(
                    f"FeatureConfig.{field}: expected {expected}, got {getattr(self, field)!r}"
                )

        need(self.version == 1, "version", "1 (the only version this code implements)")
        need(self.feature_set in FEATURE_SETS, "feature_set", f"one of {FEATURE_SETS}")
        need(isinstance(self.sample_rate, int) and self.sample_rate >= 8000, "sample_rate", "an int >= 8000")
        need(0 < self.highpass_hz < self.sample_rate / 2, "highpass_hz", "a frequency between 0 and Nyquist")
        need(1 <= self.highpass_order <= 10, "highpass_order", "an int in 1..10")
        need(self.max_duration_s > 0, "max_duration_s", "a positive number of seconds")
        need(self.silence_peak_dbfs < 0, "silence_peak_dbfs", "a negative dBFS value")
        need(0 < self.target_peak <= 1, "target_peak", "a value in (0, 1]")
        need(self.top_db > 0, "top_db", "a positive number of dB")
        need(self.vad_min_speech_s >= 0, "vad_min_speech_s", "a number of seconds >= 0 (0: no speech detection)")
        need(0 < self.vad_threshold < 1, "vad_threshold", "a probability in (0, 1)")
        if self.vad_min_speech_s > 0:
            need(self.sample_rate == 16000, "sample_rate", "16000 (Silero VAD's 16 kHz model), or vad_min_speech_s 0")
            need(bool(re.fullmatch(r"[0-9a-f]{64}", self.vad_sha256)), "vad_sha256", "the sha256 (64 hex digits) of the VAD weights")
        need(self.window_s > 0, "window_s", "a positive number of seconds")
        need(0 < self.hop_s <= self.window_s, "hop_s", "a positive number of seconds <= window_s")
        # windows are strided views of one frame sequence: a window hop must be whole frames
        need(self.hop_samples % self.hop_length == 0, "hop_s", "a multiple of hop_length samples")
        need(self.window_samples >= self.n_fft, "window_s", "at least n_fft samples")
        need(0 <= self.pre_emphasis < 1, "pre_emphasis", "a value in [0, 1)")
        need(self.n_fft > 0 and self.hop_length > 0, "n_fft", "positive n_fft and hop_length")
        need(0 < self.n_mfcc <= self.n_mels, "n_mfcc", "0 < n_mfcc <= n_mels")
        need(self.lifter >= 0, "lifter", "an int >= 0")
        need(self.delta_width >= 3 and self.delta_width % 2 == 1, "delta_width", "an odd int >= 3")
        need(self.pitch_n_fft >= self.n_fft, "pitch_n_fft", "an int >= n_fft")
        need(0 < self.pitch_fmin < self.pitch_fmax < self.sample_rate / 2, "pitch_fmin", "0 < pitch_fmin < pitch_fmax < Nyquist")
        if self.is_embedding:
            need(bool(re.fullmatch(r"[0-9a-f]{64}", self.encoder_sha256)), "encoder_sha256", "the sha256 (64 hex digits) of the encoder weights")
            need(self.sample_rate == 16000, "sample_rate", "16000 (the speaker encoder was trained at 16 kHz)")
            need(self.encoder_level_dbfs < 0, "encoder_level_dbfs", "a negative dBFS value")

    @classmethod
    def for_feature_set(cls, feature_set: str, **changes) -> "FeatureConfig":
        """The default config of a feature set.

        ``speaker_embedding`` cuts 1.6-s windows with a 0.8-s hop (the encoder was trained on 1.6-s
        partial utterances) and names the encoder weights it uses.
        """
        if feature_set in EMBEDDING_FEATURE_SETS:
            changes = {"window_s": 1.6, "hop_s": 0.8, "encoder_sha256": ENCODER_SHA256, **changes}
        return cls(feature_set=feature_set, **changes)

    # -- derived sizes ----------------------------------------------------
    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_s * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """Frames per window (98 for the defaults: 1 s, 25 ms frames, 10 ms hop, no centring)."""
        return 1 + (self.window_samples - self.n_fft) // self.hop_length

    @property
    def is_embedding(self) -> bool:
        return self.feature_set in EMBEDDING_FEATURE_SETS

    @property
    def family(self) -> str:
        """The model family trained on this feature set: ``cnn`` or ``embedding_head``."""
        return "embedding_head" if self.is_embedding else "cnn"

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one window's features: (3, 98, 12) channels first, or (256,) for an embedding."""
        return (EMBEDDING_DIM,) if self.is_embedding else (3, self.n_frames, self.n_mfcc)

    # -- serialisation ------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(
                f"FeatureConfig: unknown field(s) {unknown}; this code cannot reproduce that config"
            )
        kwargs = {}
        for name, value in d.items():
            typ = type(known[name].default)
            try:
                kwargs[name] = typ(value) if typ in (int, float) else value
            except (TypeError, ValueError):
                raise ConfigError(f"FeatureConfig.{name}: expected {typ.__name__}, got {value!r}") from None
            if typ is int and float(value) != kwargs[name]:
                raise ConfigError(f"FeatureConfig.{name}: expected an int, got {value!r}")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> "FeatureConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"FeatureConfig: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError("FeatureConfig: expected a JSON object")
        return cls.from_dict(d)


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded SQLite store under ``<repo>/mlruns``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlruns' / 'mlflow.db'}"



@dataclass(frozen=True)
class FileLimits:
    """What one input file may cost, checked on its header before anything is decoded.

    A crafted header declares what it likes in a few KB: 1 Hz (36,000 frames read as 10 hours, each
    resampled to 16 kHz), 8 channels at 655 kHz (GBs of float32 from a small FLAC), or days of digital
    silence. Past a limit a file is an error row, never minutes of work or gigabytes of one worker's memory.
    Read from the environment (README "Limits") at each use, so a job's workers see the job's settings.

    Attributes
    ----------
    hold_samples : int
        Most decoded samples (frames x channels) held at once (``VOICECLF_MAX_HOLD_SAMPLES``, default 32 M,
        128 MB of float32): a file above it is streamed in blocks this size, not decoded whole.
    decode_samples : int
        Most samples (frames x channels) one file may decode in all (``VOICECLF_MAX_DECODE_SAMPLES``,
        default 4 G: 23 h of 48-kHz stereo, 69 h of 16-kHz mono); above it: error ``too_big``.
    stream_s : float
        Longest recording, in seconds by its header (``VOICECLF_MAX_STREAM_S``, default 86,400: 24 h);
        above it: error ``too_long``.
    min_sample_rate : int
        Lowest sample rate, in Hz (``VOICECLF_MIN_SAMPLE_RATE``, default 4,000; telephone audio is 8,000):
        below it no voice can be told apart, and it is a lying header; error ``corrupt``.
    """

    hold_samples: int = 32 * 2**20
    decode_samples: int = 4 * 2**30
    stream_s: float = 86400.0
    min_sample_rate: int = 4000

    ENV = {"hold_samples": "VOICECLF_MAX_HOLD_SAMPLES", "decode_samples": "VOICECLF_MAX_DECODE_SAMPLES",
           "stream_s": "VOICECLF_MAX_STREAM_S", "min_sample_rate": "VOICECLF_MIN_SAMPLE_RATE"}

    @classmethod
    def from_env(cls) -> "FileLimits":
        """The limits, each from its environment variable when set; ConfigError naming a variable that is not a positive number."""
        values = {}
        for name, var in cls.ENV.items():
            text = os.environ.get(var, "").strip()
            if not text:
                continue
            kind = float if name == "stream_s" else int
            try:
                value = kind(float(text)) if kind is int else float(text)
            except ValueError:
                value = 0
            if not value > 0:
                raise ConfigError(f"{var}={text!r}: expected a positive number")
            values[name] = value
        return cls(**values)
