"""Per-window p(male) of one recording → who speaks when: speech turns by sex, and seconds of speech per sex.

Windows are cut from the *speech track*: the voiced regions of a recording joined end to end
(:func:`voiceclf.features.speech_track`), so they overlap (hop < window) and a window can straddle a pause.
A turn is worked out in three steps, all pure functions of arrays:

1. **decide** (:func:`decide`): a two-state HMM (female, male) over the windows, decoded with Viterbi and a
   switch penalty, as inaSpeechSegmenter smooths its frame decisions: one odd window inside a long turn
   is outvoted, a run of confident windows is not. The decoding is ``librosa.sequence.viterbi_discriminative``'s
   (the model's p_male is a posterior, which is what it takes), written out for two states (:func:`viterbi2`).
2. **cut** (:func:`track_runs`): runs of windows with one label become stretches of the track, split where
   two runs meet: halfway between their windows' centres, or — when a pause between voiced regions lies
   within half a window of that point — at the longest such pause, since people take turns at pauses.
3. **place** (:func:`turns_of`): each stretch is mapped back to the recording through the voiced regions;
   its pieces separated by at most ``max_pause_s`` of silence form one turn, so turns are consecutive,
   never overlap, and cover every voiced region.

Seconds per sex (:func:`seconds_by_sex`) are the turns' durations, short pauses inside a turn included, as an
annotator marks speaking time: the energy rule's voiced regions leave out word gaps and weak sounds (they held
57–92 % of the true turns' time on the conversations bench), and counting them alone was further off the true
share (5.0 points mean error against 4.5 for the turns).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voiceclf.config import LABELS

#: Probability that the speaker's sex changes from one window to the next. Low enough that one stray window
#: inside a turn is outvoted unless it is very sure (switching there costs two transitions of 0.2 each),
#: high enough that a turn of ~1 s of confident windows survives. Chosen on the conversations bench
#: (bench/conversations.py, 60 conversations of held-out speakers): 0.2 had the lowest female-share error and
#: the highest frame accuracy of 0.005, 0.02, 0.05 and 0.2 (turns of 1-10 s, windows 0.8 s apart).
SWITCH_P = 0.2
#: Pauses up to this long inside one voice's speech stay inside one turn (2 s covered 96 % of the true turns'
#: frames on the conversations bench, 1 s 95 %, at the same frame accuracy).
MAX_PAUSE_S = 2.0
#: A file is ``mixed`` when the less-heard sex holds at least ``MIXED_MIN_SHARE`` of its turns' time and at least
#: ``MIXED_MIN_S`` seconds, counting only turns whose mean p_male is at least ``MIXED_MIN_CONFIDENCE`` sure of
#: their sex. On the bench, single speakers misjudged over a stretch (3 of 251 held-out recordings, 4–5 s at the
#: start of a file) had minority turns of mean p 0.63–0.73, where a real second voice is far surer.
MIXED_MIN_SHARE = 0.15
MIXED_MIN_S = 3.0
MIXED_MIN_CONFIDENCE = 0.8


@dataclass(frozen=True)
class Turn:
    """One speech turn: [start_s, end_s) in the recording, its label and the mean p_male of its windows."""

    start_s: float
    end_s: float
    label: str
    p_male: float


def decide(p_male: np.ndarray, *, switch_p: float = SWITCH_P, threshold: float = 0.5) -> np.ndarray:
    """Labels (0 female, 1 male) of a file's windows in track order, decoded jointly by Viterbi.

    p_male : (n,) p(male) per window, in track order.  switch_p : probability of a change of sex between
    neighbouring windows.  threshold : the p_male that counts as even (0.5: the model's own posterior);
    p is shifted so that ``threshold`` maps to 0.5 before decoding, so a file-level threshold is kept.
    """
    p = np.asarray(p_male, dtype=np.float64)
    if len(p) == 0:
        return np.zeros(0, np.int64)
    if threshold != 0.5:  # piecewise-linear map: threshold → 0.5, 0 → 0, 1 → 1
        p = np.where(p < threshold, 0.5 * p / threshold, 0.5 + 0.5 * (p - threshold) / (1 - threshold))
    if len(p) == 1 or switch_p <= 0:
        return (p >= 0.5).astype(np.int64)
    return viterbi2(np.clip(p, 1e-6, 1 - 1e-6), switch_p)


def viterbi2(p_male: np.ndarray, switch_p: float) -> np.ndarray:
    """The most likely state path (0 female, 1 male) of a two-state HMM whose per-window posteriors are ``p_male``
    and whose state changes with probability ``switch_p`` between windows, from a uniform start.

    What ``librosa.sequence.viterbi_discriminative`` computes (tests/library/test_turns.py checks they agree), written out
    for two states because score's parent does not otherwise import librosa: its import and numba compilation
    cost ~2.4 s per job, against ~1 µs per window here.
    """
    lp1 = np.log(p_male).tolist()
    lp0 = np.log1p(-p_male).tolist()
    stay, move = float(np.log1p(-switch_p)), float(np.log(switch_p))
    n = len(lp1)
    s0, s1 = lp0[0], lp1[0]
    came_across = bytearray(2 * n)  # came_across[2t + j]: state j at t was reached from the other state
    for t in range(1, n):
        a0, b0 = s0 + stay, s1 + move  # into female: from female, from male
        a1, b1 = s1 + stay, s0 + move  # into male: from male, from female
        came_across[2 * t], came_across[2 * t + 1] = b0 > a0, b1 > a1
        s0 = (b0 if b0 > a0 else a0) + lp0[t]
        s1 = (b1 if b1 > a1 else a1) + lp1[t]
    path = np.zeros(n, np.int64)
    state = int(s1 > s0)
    for t in range(n - 1, -1, -1):
        path[t] = state
        if came_across[2 * t + state]:
            state = 1 - state
    return path


def track_position(offsets_s: np.ndarray, regions_s: np.ndarray) -> np.ndarray:
    """Where each window starts in the speech track, in seconds, from its start in the recording.

    The inverse of :meth:`voiceclf.features.SpeechTrack.timing`: a window's offset lies in a voiced region
    (the first region's start for the single window of a track shorter than one window).
    """
    regions_s = np.asarray(regions_s, dtype=np.float64).reshape(-1, 2)
    track_at = np.concatenate([[0.0], np.cumsum(regions_s[:, 1] - regions_s[:, 0])])
    k = np.clip(np.searchsorted(regions_s[:, 0], np.asarray(offsets_s, np.float64), side="right") - 1, 0, len(regions_s) - 1)
    return track_at[k] + np.asarray(offsets_s, np.float64) - regions_s[k, 0]


def track_runs(starts_s: np.ndarray, labels: np.ndarray, regions_s: np.ndarray, *, window_s: float) -> list[tuple[float, float, int, int]]:
    """Runs of equally labelled windows as stretches of the speech track: (start_s, end_s, first, last) each.

    starts_s : (n,) window starts in the track (sorted).  labels : (n,) 0/1.  regions_s : (k, 2) voiced regions.
    The stretches tile the whole track [0, track length): a boundary sits halfway between the centres of
    the last window of one run and the first of the next, moved to the longest pause between voiced
    regions within ``window_s / 2`` of it when there is one (junctions of the track are pauses).
    """
    regions_s = np.asarray(regions_s, dtype=np.float64).reshape(-1, 2)
    lengths = regions_s[:, 1] - regions_s[:, 0]
    track_len = float(lengths.sum())
    junctions = np.cumsum(lengths)[:-1]  # where one voiced region ends and the next begins, in track time
    pauses = regions_s[1:, 0] - regions_s[:-1, 1]
    centres = np.asarray(starts_s, np.float64) + window_s / 2
    change = np.flatnonzero(np.diff(labels) != 0)  # run ends before window change+1
    bounds = []
    for i in change:
        b = (centres[i] + centres[i + 1]) / 2
        near = np.flatnonzero(np.abs(junctions - b) <= window_s / 2)
        if len(near):
            b = float(junctions[near[np.argmax(pauses[near] - 1e-6 * np.abs(junctions[near] - b))]])
        bounds.append(b)
    edges = np.clip(np.array([0.0, *bounds, track_len]), 0.0, track_len)
    edges = np.maximum.accumulate(edges)  # a snapped boundary never goes back past the one before it
    firsts = np.concatenate([[0], change + 1])
    lasts = np.concatenate([change, [len(labels) - 1]])
    return [(float(a), float(b), int(f), int(l)) for a, b, f, l in zip(edges[:-1], edges[1:], firsts, lasts) if b > a]


def to_recording(a: float, b: float, regions_s: np.ndarray) -> list[tuple[float, float]]:
    """The stretch [a, b) of the speech track as pieces [start, end) of the recording, in seconds."""
    regions_s = np.asarray(regions_s, dtype=np.float64).reshape(-1, 2)
    track_at = np.concatenate([[0.0], np.cumsum(regions_s[:, 1] - regions_s[:, 0])])
    out = []
    for k in range(max(0, int(np.searchsorted(track_at, a, side="right")) - 1), len(regions_s)):
        lo, hi = max(a, track_at[k]), min(b, track_at[k + 1])
        if track_at[k] >= b:
            break
        if hi > lo:
            out.append((regions_s[k, 0] + lo - track_at[k], regions_s[k, 0] + hi - track_at[k]))
    return out


def turns_of(p_male: np.ndarray, offsets_s: np.ndarray, regions_s: np.ndarray, *, window_s: float,
             switch_p: float = SWITCH_P, max_pause_s: float = MAX_PAUSE_S, threshold: float = 0.5) -> tuple[list[Turn], dict[str, float]]:
    """A recording's speech turns and its seconds of speech per sex.

    p_male : (n,) per window.  offsets_s : (n,) each window's start in the recording, in seconds.
    regions_s : (k, 2) the recording's voiced regions, in seconds.  window_s : window length, in seconds.
    Returns the turns (sorted, non-overlapping, covering every voiced region) and
    ``{"female_s", "male_s", "female_share"}``: seconds of the turns of each sex (``female_share`` is NaN without speech).
    """
    regions_s = np.asarray(regions_s, dtype=np.float64).reshape(-1, 2)
    p = np.asarray(p_male, np.float64)
    if len(p) == 0 or len(regions_s) == 0:
        return [], seconds_by_sex([])
    starts = track_position(offsets_s, regions_s)
    order = np.argsort(starts, kind="stable")
    starts, p = starts[order], p[order]
    labels = decide(p, switch_p=switch_p, threshold=threshold)
    turns = []
    for a, b, first, last in track_runs(starts, labels, regions_s, window_s=window_s):
        label, pm = LABELS[labels[first]], round(float(p[first : last + 1].mean()), 6)
        for s, e in to_recording(a, b, regions_s):
            prev = turns[-1] if turns else None
            if prev is not None and prev.label == label and s - prev.end_s <= max_pause_s:
                turns[-1] = Turn(prev.start_s, e, label, prev.p_male)
            else:
                turns.append(Turn(s, e, label, pm))
    return turns, seconds_by_sex([(t.start_s, t.end_s, t.label) for t in turns])


def seconds_by_sex(pieces) -> dict[str, float]:
    """``female_s``, ``male_s`` and ``female_share`` of (start_s, end_s, label) stretches of speech."""
    f = sum(e - s for s, e, lab in pieces if lab == "female")
    m = sum(e - s for s, e, lab in pieces if lab == "male")
    return dict(female_s=round(f, 3), male_s=round(m, 3), female_share=round(f / (f + m), 6) if f + m > 0 else np.nan)


def is_mixed(found: list[Turn], *, min_share: float = MIXED_MIN_SHARE, min_s: float = MIXED_MIN_S,
             min_confidence: float = MIXED_MIN_CONFIDENCE) -> bool:
    """Whether both sexes hold a real share of a file's turns: the less-heard one, counting only turns at least
    ``min_confidence`` sure of their sex, has at least ``min_share`` of all the turns' time and ``min_s`` seconds."""
    total = sum(t.end_s - t.start_s for t in found)
    sure = {lab: sum(t.end_s - t.start_s for t in found if t.label == lab and max(t.p_male, 1 - t.p_male) >= min_confidence)
            for lab in LABELS}
    minority = min(sure.values())
    return total > 0 and minority >= min_s and minority / total >= min_share
