"""Conversations: turns by sex, seconds per sex, ``mixed``, and the turns written as CSV, RTTM and TextGrid."""
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import run_job
from voiceclf import conversation, synth, turn_formats, turns

WINDOW_S, HOP_S = 1.0, 0.5


def track_windows(regions_s: np.ndarray, window_s: float = WINDOW_S, hop_s: float = HOP_S) -> tuple[np.ndarray, np.ndarray]:
    """Window offsets in the recording and the recording time of each window's centre, as features.SpeechTrack cuts them."""
    regions_s = np.asarray(regions_s, float)
    track_at = np.concatenate([[0], np.cumsum(regions_s[:, 1] - regions_s[:, 0])])
    starts = np.arange(0, track_at[-1] - window_s + 1e-9, hop_s)

    def at(t):
        k = np.clip(np.searchsorted(track_at, t, side="right") - 1, 0, len(regions_s) - 1)
        return regions_s[k, 0] + t - track_at[k]

    return at(starts), at(starts + window_s / 2)


def test_turns_follow_the_speakers_and_cover_every_voiced_region():
    # female speaks 0-4 s (two voiced regions), pause, male 4.5-9 s, pause, female 9.3-12 s
    regions = np.array([[0.0, 2.0], [2.3, 4.0], [4.5, 9.0], [9.3, 12.0]])
    truth = [(0.0, 4.0, "female"), (4.5, 9.0, "male"), (9.3, 12.0, "female")]
    offsets, centres = track_windows(regions)
    p = np.where((centres > 4.25) & (centres < 9.15), 0.9, 0.1)
    p[3] = 0.7  # one stray window inside the first turn is outvoted by its neighbours
    found, secs = turns.turns_of(p, offsets, regions, window_s=WINDOW_S)
    assert [(round(t.start_s, 6), round(t.end_s, 6), t.label) for t in found] == truth
    assert secs["female_s"] == pytest.approx(4.0 + 2.7) and secs["male_s"] == pytest.approx(4.5)  # a turn's short pause counts
    assert secs["female_share"] == pytest.approx(6.7 / 11.2, abs=1e-6)
    # consecutive, non-overlapping, every voiced region inside a turn
    assert all(a.end_s <= b.start_s for a, b in zip(found, found[1:]))
    for s, e in regions:
        assert any(t.start_s <= s and e <= t.end_s for t in found)


def test_window_by_window_would_flip_where_the_sequence_does_not():
    p = np.array([0.1, 0.1, 0.2, 0.6, 0.2, 0.1, 0.1, 0.1])
    assert list(turns.decide(p, switch_p=0.0)) == [0, 0, 0, 1, 0, 0, 0, 0]  # no smoothing: a one-window male turn
    assert list(turns.decide(p)) == [0] * 8
    # a run of confident windows is a real turn and is kept
    q = np.array([0.1] * 6 + [0.97] * 3 + [0.1] * 6)
    assert list(turns.decide(q)) == [0] * 6 + [1] * 3 + [0] * 6


def test_mixed_needs_a_real_share_of_both():
    T = turns.Turn
    assert turns.is_mixed([T(0, 30, "female", 0.05), T(30, 50, "male", 0.95)])
    assert not turns.is_mixed([T(0, 30, "female", 0.05), T(30, 32, "male", 0.95)])  # too few seconds of the other voice
    assert not turns.is_mixed([T(0, 100, "female", 0.05), T(100, 110, "male", 0.95)])  # too small a share
    assert not turns.is_mixed([T(0, 10, "female", 0.15), T(10, 15, "male", 0.7)])  # the other voice is not a sure one
    assert not turns.is_mixed([])


def test_rttm_and_textgrid_parse():
    from praatio import textgrid

    seg = pd.DataFrame([("a dir/x.wav", 0.5, 2.0, "female", 0.1), ("a dir/x.wav", 2.4, 5.0, "male", 0.9), ('q"y.wav', 0.0, 1.0, "male", 0.8)],
                       columns=["path", "start_s", "end_s", "label", "p_male"])
    lines = turn_formats.to_rttm(seg).splitlines()
    assert len(lines) == 3
    fields = [ln.split(" ") for ln in lines]
    assert all(len(f) == 10 and f[0] == "SPEAKER" and f[2] == "1" for f in fields)
    assert fields[0][1] == "a_dir/x.wav" and fields[1][7] == "male"
    assert float(fields[1][3]) == 2.4 and float(fields[1][4]) == pytest.approx(2.6)

    text = turn_formats.to_textgrid(seg, {"a dir/x.wav": 6.0, 'q"y.wav': 1.0, "silent.wav": 3.0})
    tg = textgrid.openTextgrid(_write(text), includeEmptyIntervals=False)
    assert tg.tierNames == ("a dir/x.wav", 'q"y.wav', "silent.wav")
    got = [(e.start, e.end, e.label) for e in tg.getTier("a dir/x.wav").entries]
    assert got == [(0.5, 2.0, "female"), (2.4, 5.0, "male")]
    assert tg.maxTimestamp == 6.0 and not tg.getTier("silent.wav").entries


def _write(text: str) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile("w", suffix=".TextGrid", delete=False)
    f.write(text)
    f.close()
    return f.name


def synthetic_conversation(seed: int, n_turns: int = 8, seconds=(2.0, 4.0)):
    """Two synthetic voices, a woman and a man, taking turns; returns the waveform and its true turns."""
    rng = np.random.default_rng(seed)
    voices = {g: synth.speaker_voice(g, rng) for g in ("female", "male")}
    labels = [("female", "male")[i % 2] for i in range(n_turns)]
    clips = [synth.synth_utterance(g, rng, voice=voices[g], duration_s=rng.uniform(*seconds)) for g in labels]
    return conversation.stitch(clips, labels, rng, pause_s=(0.3, 0.7))


def frame_agreement(seg: pd.DataFrame, truth, step_s: float = 0.01) -> tuple[float, float]:
    """Share of the true turns' frames inside some found turn (coverage), and of those, labelled right."""
    covered = right = total = 0
    for s, e, lab in truth:
        for t in np.arange(s, e, step_s):
            total += 1
            hit = seg[(seg.start_s <= t) & (t < seg.end_s)]
            covered += len(hit) > 0
            right += len(hit) > 0 and hit.iloc[0].label == lab
    return covered / total, right / max(covered, 1)


@pytest.fixture(scope="module")
def talks(tmp_path_factory):
    """A folder with two conversations of a woman and a man, and one clip of each sex alone."""
    root = tmp_path_factory.mktemp("talks")
    truth = {}
    for k in range(2):
        y, t = synthetic_conversation(seed=k)
        sf.write(root / f"talk{k}.wav", y, 16000, subtype="PCM_16")
        truth[f"talk{k}.wav"] = t
    rng = np.random.default_rng(7)
    for g in ("female", "male"):
        y = synth.synth_recording(g, rng, duration_s=12.0)
        sf.write(root / f"alone_{g}.wav", y, 16000, subtype="PCM_16")
    return root, truth


def test_a_conversation_is_mixed_with_its_turns_and_single_voices_keep_their_sex(champion, talks, tmp_path):
    root, truth = talks
    out, seg_csv = tmp_path / "report.csv", tmp_path / "turns.csv"
    run_job("score", root, "--out", out, "--segments", seg_csv, "--jobs", "1", env={"MLFLOW_TRACKING_URI": champion}, check=True)
    report = pd.read_csv(out).set_index(pd.read_csv(out)["path"].map(lambda p: p.rsplit("/", 1)[-1]))
    seg = pd.read_csv(seg_csv)
    assert list(seg.columns) == ["path", "start_s", "end_s", "label", "p_male"]
    assert report.loc["alone_female.wav", "label"] == "female" and report.loc["alone_male.wav", "label"] == "male"
    assert report.loc["alone_female.wav", "female_share"] > 0.9 and report.loc["alone_male.wav", "female_share"] < 0.1
    for name, t in truth.items():
        row = report.loc[name]
        assert row["label"] == "mixed", row.to_dict()
        true_f = sum(e - s for s, e, g in t if g == "female") / sum(e - s for s, e, _ in t)
        assert abs(row["female_share"] - true_f) < 0.1
        mine = seg[seg.path.str.endswith(name)].sort_values("start_s")
        assert (mine.start_s.values[1:] >= mine.end_s.values[:-1]).all()  # consecutive, non-overlapping
        coverage, accuracy = frame_agreement(mine, t)
        assert coverage > 0.95 and accuracy > 0.9, (coverage, accuracy)
        # every true speaker change has a found one within 0.5 s
        changes = [b[0] for a, b in zip(t, t[1:]) if a[2] != b[2]]
        found = mine.start_s.values[1:][mine.label.values[1:] != mine.label.values[:-1]]
        assert all(np.min(np.abs(found - c)) < 0.5 for c in changes), (changes, found)

    for fmt in ("rttm", "textgrid"):
        path = tmp_path / f"turns.{fmt}"
        run_job("score", root, "--out", tmp_path / f"r_{fmt}.csv", "--segments", path, "--segments-format", fmt, "--jobs", "1",
                env={"MLFLOW_TRACKING_URI": champion}, check=True)
        if fmt == "rttm":
            rows = [ln.split() for ln in path.read_text().splitlines()]
            assert len(rows) == len(seg) and all(r[0] == "SPEAKER" and r[7] in ("female", "male") for r in rows)
        else:
            from praatio import textgrid

            tg = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
            assert len(tg.tierNames) == 4
            assert sum(len(tg.getTier(n).entries) for n in tg.tierNames) == len(seg)


def test_a_long_conversation_has_the_same_turns_streamed_or_read_whole(champion, tmp_path, monkeypatch):
    """A recording above streaming.STREAM_ABOVE_S is streamed in blocks with every window kept: its turns and seconds
    per sex are those of the whole-file path."""
    from voiceclf import file_windows, score, streaming, tracking

    y, truth = synthetic_conversation(seed=4, n_turns=40, seconds=(2.0, 5.0))  # seed 3: a low woman the small test model misses
    assert len(y) / 16000 > streaming.STREAM_ABOVE_S
    sf.write(tmp_path / "long.wav", y, 16000, subtype="PCM_16")
    tracking.connect(champion)
    model = tracking.load(tracking.DEFAULT_MODEL_URI)
    item = file_windows.Item("long.wav", str(tmp_path))
    streamed = []
    real = file_windows._featurize_long
    monkeypatch.setattr(file_windows, "_featurize_long", lambda it, cfg, mw: streamed.append(mw) or real(it, cfg, mw))

    def turns_now():
        (r,) = file_windows.featurize_batch([file_windows.Item(item.path, item.source)], model.cfg, max_windows=None)
        rows, seg = score.score_results([r], model.module, threshold=0.5, model_uri="m", model_version="1", window_s=model.cfg.window_s)
        return r, rows[0], pd.DataFrame(seg)

    r_long, row_long, seg_long = turns_now()
    assert streamed == [None] and r_long.n_windows > streaming.MAX_WINDOWS / 10
    monkeypatch.setattr(streaming, "STREAM_ABOVE_S", 1e9)
    r_whole, row_whole, seg_whole = turns_now()
    assert streamed == [None]  # the second read did not stream
    assert r_long.n_windows == r_whole.n_windows
    np.testing.assert_array_equal(r_long.windows.regions_s, r_whole.windows.regions_s)
    assert list(seg_long.label) == list(seg_whole.label) and len(seg_long) > 10
    np.testing.assert_allclose(seg_long[["start_s", "end_s"]].values, seg_whole[["start_s", "end_s"]].values, atol=1e-3)
    assert row_long["label"] == row_whole["label"] == "mixed"
    assert row_long["female_s"] == pytest.approx(row_whole["female_s"], abs=0.01)
    # and the whole speech is covered: no window cap on a streamed file when scoring
    true_f = sum(e - s for s, e, g in truth if g == "female") / sum(e - s for s, e, _ in truth)
    assert abs(row_long["female_share"] - true_f) < 0.1


def test_the_two_state_viterbi_is_librosas():
    import librosa.sequence

    rng = np.random.default_rng(0)
    for n, switch_p in ((2, 0.2), (7, 0.02), (50, 0.2), (400, 0.05), (400, 0.4)):
        # runs of one sex with noise, so paths have both long stretches and contested windows
        p = np.clip(np.repeat(rng.random(n // 5 + 1) > 0.5, 5)[:n] * 0.8 + 0.1 + rng.normal(0, 0.25, n), 1e-6, 1 - 1e-6)
        trans = np.array([[1 - switch_p, switch_p], [switch_p, 1 - switch_p]])
        ref = librosa.sequence.viterbi_discriminative(np.stack([1 - p, p]), trans)
        got = turns.viterbi2(p, switch_p)
        assert (got == ref).all(), (n, switch_p)
        assert 0 < got.sum() < n or n < 10  # the test exercises switches
