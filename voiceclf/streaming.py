"""A recording too long to hold in memory → a bounded, evenly spread set of its windows, in two streaming passes.

Decoding a whole file costs ~65 MB of worker memory per minute of audio (a 60-minute file took 4.3 GB), and
its windows cost ~28 kB per second of speech (a 10-hour file: ~1 GB). A file longer than
``STREAM_ABOVE_S`` is instead read twice, one block at a time (:func:`voiceclf.audio.cleaned_blocks`):

1. **survey**: the peak (for the level normalisation) and the power of every voice-activity frame, from
   which the voiced regions follow with exactly the rule of :func:`voiceclf.features.voiced_intervals`,
   relative to the loudest frame of the whole file. The only state that grows with length: one float32
   per 10-ms frame (1.4 MB per hour).
2. **windows**: the speech track (the voiced regions joined) flows past; only the stretches around the
   windows that are kept are buffered, and their features are computed a group of neighbouring windows
   at a time, with enough context on each side that every kept window's frames are those of the whole
   track (STFTs are per frame; the delta and the centred pitch frames reach a few frames out).

What a long file's result is: **at most ``MAX_WINDOWS`` windows, evenly spread over its speech** (all of
them when it has fewer). A file's label is the mean p(male) of its windows, and a sample of 1200 spread
over hours estimates that mean as well as all 72,000 of a 10-hour file would, at a fixed cost in memory
(features: ~17 MB CNN, ~31 MB mel windows) and in time for the features (only the sampled stretches get
an STFT). For training the cap is right too: training draws speakers, and one speaker's 10 minutes of
speech is plenty. Report rows say how many windows were scored; ``--segments`` lists those windows.
No augmented variants are made of a long file (they need the whole waveform; the file alone gives up
to ``MAX_WINDOWS`` windows of one speaker already).

Whole-file quantities, and what they mean here:
- peak normalisation, voiced regions, ``duration_s``: exactly as for a short file (the survey sees all of it);
- the speaker encoder's input level (RMS of the whole speech track): exact, from the survey's sums of squares
  per hop, so scoring embeds each group's mel windows as they are computed (the mel is power: x a² after);
- the 80-dB floor of the log spectra (relative to the loudest bin of the whole track): relative to the
  loudest bin of the stretches computed, which is the whole track when every window is kept.
A file just above ``STREAM_ABOVE_S`` thus gets the windows the whole-file path gives, to float rounding.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import soundfile as sf

from voiceclf import audio, features
from voiceclf.config import FeatureConfig
from voiceclf.features import Windows

#: Recordings longer than this (seconds, by their header) are streamed; shorter ones are decoded whole,
#: as before, so their features do not change. Two minutes keep a whole-file CNN worker under ~500 MB.
STREAM_ABOVE_S = 120.0
#: The most windows a streamed recording gives (10 minutes of speech at the 0.5-s hop).
MAX_WINDOWS = 1200
#: Seconds of audio decoded per block, and the longest stretch of speech track computed in one piece.
BLOCK_S = 30.0
GROUP_S = 30.0


def is_long(path: str | os.PathLike, threshold_s: float = STREAM_ABOVE_S) -> bool:
    """Whether the header says the recording is longer than ``threshold_s``; False when there is no readable header
    (the whole-file path then reports why the file cannot be read)."""
    try:
        with sf.SoundFile(os.fspath(path)) as f:  # sf.info's duration, without the extra header strings it reads
            return f.frames / f.samplerate > threshold_s
    except Exception:
        return False


@dataclass(frozen=True)
class Survey:
    """What the first pass learns about the whole recording.

    gain : the peak normalisation factor (1.0 for a silent recording, as :func:`voiceclf.audio.clean`).
    intervals : (k, 2) voiced regions in samples at ``cfg.sample_rate``.
    speech_sumsq : the speech track's sum of squares, which sets the speaker encoder's input level before any
    window is computed (so a long file's windows can be embedded as they come, in bounded memory).
    n_samples : length of the cleaned waveform.  source_sample_rate, duration_s : as :class:`voiceclf.audio.Audio`.
    """

    gain: float
    intervals: np.ndarray
    n_samples: int
    source_sample_rate: int
    duration_s: float
    speech_sumsq: float = 0.0  # sum of squares of the speech track (the voiced regions, after ``gain``)


def survey(path: str | os.PathLike, cfg: FeatureConfig = FeatureConfig(), block_s: float = BLOCK_S) -> Survey:
    """First pass: peak, length and the power of each voice-activity frame, then the voiced regions."""
    frame, hop = 2 * cfg.n_fft, cfg.hop_length
    peak, n = 0.0, 0
    # The frames of voiced_intervals: 2*n_fft samples centred on t*hop of the waveform padded with n_fft zeros
    # each side. ``buf`` holds the padded waveform from sample ``t_next * hop`` on.
    buf, t_next, powers = np.zeros(frame // 2), 0, []

    def frames_in(b: np.ndarray) -> np.ndarray:
        m = (len(b) - frame) // hop + 1 if len(b) >= frame else 0
        if m <= 0:
            return np.zeros(0)
        # Sums of squares by a cumulative sum, not by materialising every frame (a 5x overlap) as the
        # whole-file path does: same values to rounding, a block's worth of memory.
        cs = np.concatenate([[0.0], np.cumsum(b * b)])
        starts = np.arange(m) * hop
        return (cs[starts + frame] - cs[starts]) / frame

    # Sums of squares per hop of the waveform: voiced regions start and end on whole hops (voiced_runs), so
    # these give the speech track's energy exactly, at one float per 10 ms.
    hop_sums, rest = [], np.zeros(0)
    for x in audio.cleaned_blocks(path, cfg, block_s=block_s):
        peak = max(peak, float(np.max(np.abs(x))))
        n += len(x)
        rest = np.concatenate([rest, np.square(x, dtype=np.float64)])
        whole = len(rest) // hop * hop
        hop_sums.append(rest[:whole].reshape(-1, hop).sum(axis=1))
        rest = rest[whole:]
        buf = np.concatenate([buf, x])
        p = frames_in(buf)
        powers.append(p.astype(np.float32))
        t_next += len(p)
        buf = buf[len(p) * hop :]
    p = frames_in(np.concatenate([buf, np.zeros(frame // 2)]))[: n // hop + 1 - t_next]
    powers.append(p.astype(np.float32))
    with sf.SoundFile(os.fspath(path)) as f:
        sr, frames = f.samplerate, f.frames
    silent = peak == 0 or 20.0 * np.log10(peak) < cfg.silence_peak_dbfs  # clean() leaves these as they are
    gain = 1.0 if silent else cfg.target_peak / peak
    if silent or n == 0:
        intervals = np.zeros((0, 2), np.int64)
    else:
        intervals = features.voiced_runs(np.concatenate(powers).astype(np.float64) * gain**2, n, cfg)
    per_hop = np.concatenate([*hop_sums, [rest.sum()]])
    sumsq = sum(float(per_hop[a // hop : -(-b // hop)].sum()) for a, b in intervals) * gain**2
    return Survey(gain, intervals, n, int(sr), frames / sr, sumsq)


def spread(n: int, cap: int | None = MAX_WINDOWS) -> np.ndarray:
    """Indices of at most ``cap`` of ``n`` windows, evenly spread, first and last included (all of them for None)."""
    if cap is None or n <= cap:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, cap)).astype(np.int64))


def _context(cfg: FeatureConfig) -> int:
    """Samples of track on each side of a window that its frames depend on, in whole hops: the longest
    frame (the pitch channel's n_fft, centred) plus the delta's reach, plus a hop of margin."""
    frames = -(-max(cfg.pitch_n_fft, cfg.n_fft) // cfg.hop_length) + cfg.delta_width // 2 + 1
    return frames * cfg.hop_length


def _groups(starts: np.ndarray, n: int, keep: np.ndarray, track_len: int, cfg: FeatureConfig) -> list[tuple[int, int, np.ndarray]]:
    """Kept windows in groups computed in one piece: (track start, track end, window starts) each.

    Neighbours share a group while the gap between them is within two contexts and the group stays
    under ``GROUP_S``. The first window's group starts at the track's start and the last one's ends at the
    track's end, so a file whose windows are all kept is computed over exactly the whole track.
    """
    win, ctx, span = cfg.window_samples, _context(cfg), int(GROUP_S * cfg.sample_rate)
    out, cur = [], []
    for i, s in zip(keep, starts):
        if cur and (s + win - cur[0][1] > span or s - (cur[-1][1] + win) > 2 * ctx):
            out.append(cur)
            cur = []
        cur.append((i, s))
    if cur:
        out.append(cur)
    groups = []
    for g in out:
        first, last = g[0], g[-1]
        a = 0 if first[0] == 0 else max(0, first[1] - ctx)
        b = track_len if last[0] == n - 1 else min(track_len, last[1] + win + ctx)
        groups.append((a, b, np.array([s for _, s in g], np.int64)))
    return groups


class _Track:
    """The speech track as it flows past: buffers only what the pending groups need, and computes each group
    when its stretch is complete."""

    def __init__(self, groups: list, compute) -> None:
        self.groups, self.compute = list(groups), compute
        self.buf, self.buf_start = np.zeros(0, np.float32), 0

    def feed(self, piece: np.ndarray) -> None:
        end = self.buf_start + len(self.buf) + len(piece)
        if not self.groups:
            self.buf_start, self.buf = end, self.buf[:0]
            return
        need = self.groups[0][0]
        if end <= need:  # nothing here is needed: skip it
            self.buf_start, self.buf = end, self.buf[:0]
            return
        self.buf = np.concatenate([self.buf, piece])
        self._drop_before(need)
        while self.groups and self.groups[0][1] <= self.buf_start + len(self.buf):
            self._run(self.groups.pop(0))
            if self.groups:
                self._drop_before(self.groups[0][0])

    def finish(self) -> None:
        """Compute what is left (nothing, unless the second pass gave less audio than the first)."""
        while self.groups:
            self._run(self.groups.pop(0))

    def _drop_before(self, pos: int) -> None:
        cut = min(max(0, pos - self.buf_start), len(self.buf))
        self.buf, self.buf_start = self.buf[cut:], self.buf_start + cut

    def _run(self, group) -> None:
        a, b, starts = group
        seg = self.buf[a - self.buf_start : b - self.buf_start]
        self.compute(np.pad(seg, (0, (b - a) - len(seg))), a, starts)


def windows(path: str | os.PathLike, cfg: FeatureConfig = FeatureConfig(), *, block_s: float = BLOCK_S,
            max_windows: int | None = MAX_WINDOWS, embed: bool = False) -> tuple[Windows, Survey]:
    """The windows of a long recording (see the module docstring): CNN input, or the encoder's mel windows.

    Returns the windows (at most ``max_windows``, evenly spread; all of them for None: scoring, whose turns
    cover all the speech) and the survey (its ``duration_s`` and
    ``source_sample_rate`` are the recording's). Raises what :func:`voiceclf.audio.cleaned_blocks` raises.
    ``embed`` (speaker-embedding sets): return 256-d embeddings, each group's mel windows embedded as soon as they
    are computed, so memory holds 1 kB per window instead of 25.6 kB (a whole hour's mel windows were ~115 MB).
    """
    sv = survey(path, cfg, block_s)
    iv = sv.intervals
    if len(iv) == 0:
        return features.no_windows(cfg, _MelWindows.SHAPE if cfg.is_embedding else cfg.shape), sv
    layout = _layout(iv, cfg, max_windows)
    collected = _MelWindows(cfg, _encoder_scale(sv, layout.track_len, cfg), embed) if cfg.is_embedding else _CnnWindows(cfg)

    def compute(seg: np.ndarray, a: int, group_starts: np.ndarray) -> None:
        collected.add(layout.padded(seg), (group_starts - a) // cfg.hop_length)  # the windows' first frames in ``seg``

    track = _Track(_groups(layout.keep * cfg.hop_samples, layout.n, layout.keep, layout.track_len, cfg), compute)
    for piece in _speech_pieces(path, cfg, sv, block_s):
        track.feed(piece)
    track.finish()
    feats = collected.result()
    sp = features.SpeechTrack(np.zeros(0, np.float32), iv, layout.lead, layout.n)  # the track's layout, without its samples
    offsets_s, speech_s = sp.timing(cfg)
    keep = layout.keep
    return Windows(feats.astype(np.float32, copy=False), offsets_s[keep], speech_s[keep], sp.regions_s(cfg)), sv


@dataclass(frozen=True)
class _WindowLayout:
    """Where a long recording's windows sit on its speech track (the voiced regions joined), as the whole-file
    path cuts them (features.speech_track).

    track_len : samples of speech.  lead : zeros in front of a track shorter than one window, which is padded
    symmetrically into it.  n : windows over the track.  keep : the indices of those computed.  window : samples.
    """

    track_len: int
    lead: int
    n: int
    keep: np.ndarray
    window: int

    def padded(self, seg: np.ndarray) -> np.ndarray:
        """A stretch of track as the windows see it: a track shorter than a window padded into one."""
        if self.track_len < self.window:
            return np.pad(seg, (self.lead, self.window - len(seg) - self.lead))
        return seg


def _layout(intervals: np.ndarray, cfg: FeatureConfig, max_windows: int | None) -> _WindowLayout:
    win, hop = cfg.window_samples, cfg.hop_samples
    track_len = int(np.sum(intervals[:, 1] - intervals[:, 0]))
    short = track_len < win
    lead = (win - track_len) // 2 if short else 0
    n = 1 if short else 1 + (track_len - win) // hop
    return _WindowLayout(track_len, lead, n, spread(n, max_windows), win)


def _encoder_scale(sv: Survey, track_len: int, cfg: FeatureConfig) -> np.float32:
    """The factor on the mel power that sets the encoder's input level (embedding.mel_windows: the speech track at
    ``encoder_level_dbfs`` RMS), known from the survey. The mel is power: scaling it by the square of the gain
    equals scaling the track first."""
    rms = np.sqrt(sv.speech_sumsq / track_len)
    return np.float32((10 ** (cfg.encoder_level_dbfs / 20) / max(rms, 1e-9)) ** 2)


def _speech_pieces(path: str | os.PathLike, cfg: FeatureConfig, sv: Survey, block_s: float) -> Iterator[np.ndarray]:
    """Second pass: the cleaned waveform, scaled as :func:`voiceclf.audio.clean` would, cut to its voiced regions;
    one piece of the speech track per block that holds speech."""
    iv = sv.intervals
    pos, k = 0, 0  # position in the cleaned waveform; the first interval not yet passed
    for x in audio.cleaned_blocks(path, cfg, block_s=block_s):
        y = (x * sv.gain).astype(np.float32) if sv.gain != 1.0 else x.astype(np.float32)  # as clean() scales
        end, pieces = pos + len(y), []
        while k < len(iv) and iv[k, 0] < end:
            s, e = max(iv[k, 0], pos), min(iv[k, 1], end)
            if e > s:
                pieces.append(y[s - pos : e - pos])
            if iv[k, 1] <= end:
                k += 1
            else:
                break
        if pieces:
            yield np.concatenate(pieces)
        pos = end


class _CnnWindows:
    """CNN input of the kept windows: each group's log spectra as they come, floored and cut into windows at the end."""

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.spectra: list[tuple] = []  # (log-mel, pitch bands, the windows' first frames) per group

    def add(self, seg: np.ndarray, first_frames: np.ndarray) -> None:
        log_mel, pitch = features.log_spectra(seg, self.cfg)
        self.spectra.append((log_mel, pitch, first_frames))

    def result(self) -> np.ndarray:
        """(n, 3, n_frames, n_mfcc) float32, one 80-dB floor for every group: relative to the loudest bin of all of them,
        as frame_features floors a whole track relative to its loudest bin."""
        cfg, spectra, out = self.cfg, self.spectra, []
        mel_max = max(float(lm.max()) for lm, _, _ in spectra)
        pitch_max = None if spectra[0][1] is None else max(float(p.max()) for _, p, _ in spectra)
        nf = cfg.n_frames
        for log_mel, pitch, local in spectra:
            ch = features.channels(features.floor_db(log_mel, mel_max), None if pitch is None else features.floor_db(pitch, pitch_max), cfg)
            out.extend(ch[:, :, f : f + nf].transpose(0, 2, 1) for f in local)
        spectra.clear()
        return np.ascontiguousarray(np.stack(out))


class _MelWindows:
    """The speaker encoder's mel windows of the kept windows, or (``embed``) their embeddings, each group's few dozen
    embedded as soon as they are computed (one batch of embedding.embed), so they never pile up in the worker. Batches
    of 256 measured no faster per window (3.9 CPU s per 15 min of a conversation either way) and raised the worker's
    peak on the one-hour bench file from 558 to 675 MiB."""

    SHAPE = (160, 40)  # embedding.FRAMES_PER_WINDOW, N_MELS

    def __init__(self, cfg: FeatureConfig, scale: np.float32, embed: bool) -> None:
        self.cfg, self.scale, self.embed = cfg, scale, embed
        self.out: list[np.ndarray] = []

    def add(self, seg: np.ndarray, first_frames: np.ndarray) -> None:
        from voiceclf import embedding  # librosa's mel: only this feature set needs it

        mel = embedding.mel_frames(seg, self.cfg)
        mels = [mel[f : f + self.SHAPE[0]] for f in first_frames]
        if not self.embed:
            self.out.extend(mels)
        elif mels:
            self.out.extend(embedding.embed(np.stack(mels) * self.scale, self.cfg))

    def result(self) -> np.ndarray:
        """(n, 256) embeddings, or (n, 160, 40) mel windows at the encoder's input level."""
        out = self.out
        return np.stack(out) * (1 if self.embed else self.scale) if out else np.zeros((0, *self.SHAPE), np.float32)
