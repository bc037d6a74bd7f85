"""Conversations: who speaks when, by sex — turns and seconds per sex against known truth, and a one-hour file.

    python -m bench.conversations [--features DIR] [--tracking-uri URI] [--n 60] [--hour-min 60] [--out FILE.md]

Conversations are stitched (voiceclf.conversation) from speakers of a corpus the champion never heard
(``HELD_OUT``, default librispeech_100): two speakers each, 6–12 turns of 1–10 s (a random stretch of the
speaker's recording), pauses of 0.2–0.8 s, two conversations in five of two women or two men. The champion is
trained here on the other corpora (``jobs.train --holdout-corpus``, the embedding head only: seconds), unless
``--tracking-uri`` names a store whose ``voiceclf@champion`` already is one.

Per file, the turns of ``voiceclf.turns`` and the old per-window output (every window a segment, labelled by its
own p_male) of the same windows and the same p_male, so the comparison is of the decision only:
female-share error, frame accuracy and coverage of the true turns' frames (10 ms), turn-boundary error, and
``mixed`` calls. Single-speaker accuracy: every recording of the held-out corpus, whole. Then the job end to end:
``jobs.score`` over the conversations and over a one-hour stitched broadcast (``--jobs 2``): real-time factor and
the workers' peak RSS.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from bench import corpora
from bench.procs import BenchError, Runner, log, shown
from voiceclf import conversation, turns
from voiceclf.config import REPO_ROOT

HELD_OUT = "librispeech_100"
STEP_S = 0.01
SWITCH_PS = (0.02, 0.05, 0.2, 0.4)  # the decision's switch probability, swept; turns.SWITCH_P is the default


def plan(files: pd.DataFrame, n: int, rng: np.random.Generator) -> list[list[tuple[str, str]]]:
    """``n`` conversations as lists of (abspath, label) turns: two speakers each, alternating, 6–12 turns;
    2 in 5 of the same sex."""
    by_sex = {lab: g.reset_index(drop=True) for lab, g in files.groupby("label")}
    out = []
    for k in range(n):
        if k % 5 < 2:  # same sex
            g = by_sex[("female", "male")[k % 2]]
            a, b = g.iloc[rng.choice(len(g), 2, replace=False)].itertuples()
        else:
            a, b = by_sex["female"].iloc[rng.integers(len(by_sex["female"]))], by_sex["male"].iloc[rng.integers(len(by_sex["male"]))]
            if rng.random() < 0.5:
                a, b = b, a
        out.append([((a, b)[i % 2].abspath, (a, b)[i % 2].label) for i in range(int(rng.integers(6, 13)))])
    return out


def piece(path: str, rng: np.random.Generator, seconds=(1.0, 10.0), sample_rate: int = 16000) -> np.ndarray:
    """A random stretch of 1–10 s of a recording (all of it when shorter)."""
    y, sr = sf.read(path, dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    assert sr == sample_rate, f"{path}: {sr} Hz (the held-out corpus is 16 kHz)"
    n = min(len(y), int(rng.uniform(*seconds) * sr))
    start = int(rng.integers(0, len(y) - n + 1))
    return y[start : start + n]


def build(folder: Path, files: pd.DataFrame, n: int, seed: int = 0) -> dict[str, list]:
    """Write the conversations to ``folder``; their true turns by file name."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for k, conv in enumerate(plan(files, n, rng)):
        clips = [piece(p, rng) for p, _ in conv]
        y, t = conversation.stitch(clips, [lab for _, lab in conv], rng)
        name = f"conv{k:03d}.wav"
        sf.write(folder / name, y, 16000, subtype="PCM_16")
        truth[name] = t
    return truth


def build_hour(folder: Path, files: pd.DataFrame, minutes: float, seed: int = 1) -> dict[str, list]:
    """One long broadcast: turns of random speakers (1–10 s each) until ``minutes``, written block by block."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    name, pos, truth = "hour.wav", 0.0, []
    with sf.SoundFile(folder / name, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        while pos < 60 * minutes:
            rows = files.iloc[rng.choice(len(files), 8)]
            y, t = conversation.stitch([piece(p, rng) for p in rows.abspath], list(rows.label), rng)
            f.write(y)
            truth += [(s + pos, e + pos, lab) for s, e, lab in t]
            pos += len(y) / 16000
    return {name: truth}


def frames(truth: list, step_s: float = STEP_S) -> tuple[np.ndarray, np.ndarray]:
    """Times and true labels (0 female, 1 male) of the frames inside true turns."""
    t = [np.arange(s, e, step_s) for s, e, _ in truth]
    y = [np.full(len(x), int(lab == "male")) for x, (_, _, lab) in zip(t, truth)]
    return np.concatenate(t), np.concatenate(y)


def label_at(times: np.ndarray, starts: np.ndarray, ends: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Label at each time (-1 where no segment covers it); overlapping segments: the one whose centre is nearest."""
    out = np.full(len(times), -1)
    best = np.full(len(times), np.inf)
    centres = (starts + ends) / 2
    for s, e, lab, c in zip(starts, ends, labels, centres):
        i0, i1 = np.searchsorted(times, [s, e])
        d = np.abs(times[i0:i1] - c)
        better = d < best[i0:i1]
        out[i0:i1][better], best[i0:i1][better] = lab, d[better]
    return out


def changes_of(starts, ends, labels) -> np.ndarray:
    """Times where the label changes between consecutive segments (midway between them)."""
    idx = np.flatnonzero(np.diff(labels) != 0)
    return (np.asarray(ends)[idx] + np.asarray(starts)[idx + 1]) / 2


def evaluate(truth: list, segs: pd.DataFrame) -> dict:
    """Frame coverage and accuracy, female share and boundary errors of segments (start_s, end_s, label) against truth."""
    t, y = frames(truth)
    given_share = segs.attrs.get("share")
    segs = segs.sort_values("start_s")
    lab = (segs["label"].values == "male").astype(int)
    got = label_at(t, segs["start_s"].values, segs["end_s"].values, lab)
    covered = got >= 0
    true_share = float(np.mean(y == 0))
    share = float(np.mean(got[covered] == 0)) if given_share is None else given_share
    true_changes = [(a[1], b[0]) for a, b in zip(truth, truth[1:]) if a[2] != b[2]]  # the pause where the sex changes
    found = changes_of(segs["start_s"].values, segs["end_s"].values, lab)
    errs = [0.0 if len(found) and np.any((found >= a) & (found <= b)) else (float(np.min(np.minimum(np.abs(found - a), np.abs(found - b)))) if len(found) else np.inf)
            for a, b in true_changes]
    return {"coverage": float(covered.mean()), "accuracy": float(np.mean(got[covered] == y[covered])) if covered.any() else np.nan,
            "share_err": abs(share - true_share), "true_share": true_share, "boundary_err": errs, "found_changes": len(found), "true_changes": len(true_changes)}


def old_segments(p: np.ndarray, offsets: np.ndarray, window_s: float) -> pd.DataFrame:
    """The per-window output score wrote before turns: every window a segment of window_s, labelled alone."""
    df = pd.DataFrame({"start_s": offsets, "end_s": offsets + window_s, "label": np.where(p >= 0.5, "male", "female")})
    df.attrs["share"] = float(np.mean(p < 0.5)) if len(p) else np.nan  # share of windows labelled female
    return df


def scored_windows(folder: Path, names: list[str], model) -> dict[str, tuple]:
    """p_male, offsets and regions of every window of each file, in this process (all windows of a long file)."""
    from voiceclf import file_windows, score

    out = {}
    for name in names:
        (r,) = file_windows.featurize_batch([file_windows.Item(name, str(folder))], model.cfg, max_windows=None)
        p = score.p_male(model.module, r.windows.features) if r.n_windows else np.zeros(0)
        out[name] = (p, r.windows.offsets_s if r.n_windows else np.zeros(0), r.windows.regions_s if r.n_windows else np.zeros((0, 2)))
    return out


def compare(truth: dict[str, list], windows: dict[str, tuple], window_s: float, switch_p: float = turns.SWITCH_P) -> pd.DataFrame:
    """Per file: the turns' and the old per-window output's metrics, and the turns' ``mixed`` call."""
    rows = []
    for name, t in truth.items():
        p, off, regions = windows[name]
        found, secs = turns.turns_of(p, off, regions, window_s=window_s, switch_p=switch_p)
        new = pd.DataFrame([(x.start_s, x.end_s, x.label) for x in found], columns=["start_s", "end_s", "label"])
        new.attrs["share"] = secs["female_share"]
        two_sexes = len({lab for _, _, lab in t}) == 2
        for method, segs in (("turns", new), ("windows", old_segments(p, off, window_s))):
            m = evaluate(t, segs)
            rows.append({"file": name, "method": method, "two_sexes": two_sexes, "mixed": turns.is_mixed(found),
                         **{k: v for k, v in m.items() if k != "boundary_err"}, "boundary_errs": m["boundary_err"]})
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and max female-share error (points), frame accuracy and coverage (%), boundary error per method."""
    out = []
    for method, g in df.groupby("method", sort=False):
        errs = np.array([e for es in g["boundary_errs"] for e in es])
        out.append({"method": method, "files": len(g), "share_err_mean": 100 * g["share_err"].mean(), "share_err_max": 100 * g["share_err"].max(),
                    "accuracy": 100 * np.average(g["accuracy"]), "coverage": 100 * g["coverage"].mean(),
                    "boundary_median_s": float(np.median(errs)) if len(errs) else np.nan,
                    "boundary_within_025s": 100 * float(np.mean(errs <= 0.25)) if len(errs) else np.nan,
                    "changes_found_per_true": g["found_changes"].sum() / max(g["true_changes"].sum(), 1)})
    return pd.DataFrame(out)


def single_speaker(model, files: pd.DataFrame) -> dict:
    """Every recording of the held-out corpus alone: accuracy of the file label before (mean p_male) and with
    ``mixed`` (a single voice called mixed is wrong), speaker-balanced (mean over the sexes)."""
    from voiceclf import file_windows, score

    items = [file_windows.Item(Path(p).name, str(Path(p).parent)) for p in files.abspath]
    res = file_windows.featurize_batch(items, model.cfg)
    rows = []
    for r, lab in zip(res, files.label):
        if not r.n_windows:
            continue
        row, _ = score.score_results([r], model.module, threshold=0.5, model_uri="", model_version="", window_s=model.cfg.window_s)
        p = row[0]["p_male"]
        rows.append({"label": lab, "old": "male" if p >= 0.5 else "female", "new": row[0]["label"]})
    df = pd.DataFrame(rows)
    bacc = lambda col: 100 * np.mean([np.mean(g[col] == g["label"]) for _, g in df.groupby("label")])  # noqa: E731
    return {"files": len(df), "old_bacc": bacc("old"), "new_bacc": bacc("new"), "mixed": int((df["new"] == "mixed").sum())}


def champion(runner: Runner, workdir: Path, features: Path, device: str = "cpu") -> dict:
    """The store of a champion trained without the held-out corpus (embedding head only), trained once."""
    store = workdir / "mlruns"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
    if not (store / ".trained").exists():
        if not features.is_dir():
            raise BenchError(f"conversations: no speaker_embedding features at {features} to train a champion (run the accuracy section first)")
        shutil.rmtree(store, ignore_errors=True)
        store.mkdir(parents=True)
        runner.job("train", ["--features", shown(features), "--holdout-corpus", HELD_OUT, "--jobs", "1", "--no-system-metrics", "--device", device],
                   log_name="conv_champion_train", env=env)
        (store / ".trained").touch()
    return env


def end_to_end(runner: Runner, folder: Path, env: dict, tag: str, device: str = "cpu") -> dict:
    """``jobs.score`` over ``folder`` with turns, two workers: wall time, peak worker RSS, and its outputs."""
    out = folder.parent / f"{tag}-report.csv"
    seg = folder.parent / f"{tag}-turns.csv"
    res = runner.job("score", [shown(folder), "--out", shown(out), "--segments", shown(seg), "--jobs", "2", "--device", device], log_name=f"conv_score_{tag}", env=env, poll_memory=True)
    report = pd.read_csv(out)
    audio_s = float(report["duration_s"].sum())
    return {"wall_s": res["wall_s"], "audio_s": audio_s, "rtf": audio_s / res["wall_s"], "peak_rss_worker": res["peak_rss_worker"],
            "report": report, "segments": pd.read_csv(seg)}


def run(runner: Runner, workdir: Path, *, features: Path | None = None, tracking_uri: str | None = None, n: int = 60,
        hour_min: float = 60.0, device: str = "cpu") -> dict:
    """Everything above; returns the numbers :func:`markdown` shows."""
    from voiceclf import tracking

    wd = workdir / "conversations"
    files = corpora.files_of(HELD_OUT)
    env = {"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else champion(runner, wd, features, device)
    tracking.connect(env["MLFLOW_TRACKING_URI"])
    model = tracking.load(tracking.DEFAULT_MODEL_URI)
    log(f"conversations: {n} from {HELD_OUT} (champion {model.version}, {model.cfg.feature_set})")
    convs = wd / "convs"
    shutil.rmtree(convs, ignore_errors=True)
    truth = build(convs, files, n)
    wins = scored_windows(convs, list(truth), model)
    by_p = {sp: compare(truth, wins, model.cfg.window_s, sp) for sp in SWITCH_PS}
    per_file = by_p[turns.SWITCH_P]
    log("conversations: single speakers")
    single = single_speaker(model, files)
    log("conversations: jobs.score end to end")
    e2e = end_to_end(runner, convs, env, "convs", device)
    hour = wd / "hour"
    shutil.rmtree(hour, ignore_errors=True)
    log(f"conversations: a {hour_min:g}-minute broadcast")
    hour_truth = build_hour(hour, files, hour_min)
    e2e_hour = end_to_end(runner, hour, env, "hour", device)
    segs = e2e_hour["segments"].assign(path=lambda d: d["path"].map(lambda p: Path(p).name))
    hour_eval = evaluate(hour_truth["hour.wav"], segs[segs["path"] == "hour.wav"])
    row = e2e_hour["report"].iloc[0]
    hour_eval["share_err"] = abs(row["female_share"] - hour_eval["true_share"])
    return {"model": f"{model.uri} (version {model.version}, {model.cfg.feature_set}, trained without {HELD_OUT})", "n": n,
            "per_file": per_file, "summary": summary(per_file), "sweep": {sp: summary(df) for sp, df in by_p.items()},
            "single": single, "e2e": e2e, "hour": e2e_hour, "hour_eval": hour_eval, "hour_min": hour_min,
            "audio_s": sum(t[-1][1] for t in truth.values())}


def markdown(res: dict) -> str:
    """The section of bench/results.md."""
    mib = lambda b: f"{b / 2**20:,.0f} MiB" if b else "n/a"  # noqa: E731
    pf, L = res["per_file"], []
    add = L.append
    add("## Conversations: turns and seconds per sex (issue 19)")
    add("")
    add(f"{res['n']} conversations stitched from {HELD_OUT} speakers (held out: the champion never heard them), "
        f"{res['audio_s'] / 60:.1f} min of audio; champion {res['model']}. Same windows and p_male for both methods: "
        "`turns` = voiceclf.turns (Viterbi, turns on the voiced regions); `windows` = the per-window segments score wrote before "
        "(female share = share of windows labelled female).")
    add("")
    add("| method | female-share error mean / max (points) | frame accuracy (covered frames) | coverage of speech frames | "
        "boundary error median | sex changes found within 0.25 s | changes found per true change |")
    add("|---|---|---|---|---|---|---|")
    for s in res["summary"].itertuples():
        add(f"| {s.method} | **{s.share_err_mean:.1f} / {s.share_err_max:.1f}** | {s.accuracy:.1f} % | {s.coverage:.1f} % | "
            f"{s.boundary_median_s:.2f} s | {s.boundary_within_025s:.0f} % | {s.changes_found_per_true:.2f} |")
    add("")
    add("Switch probability of the Viterbi (turns only; the default is `turns.SWITCH_P` = "
        f"{turns.SWITCH_P}): " + "; ".join(f"{sp}: share error {d.iloc[0].share_err_mean:.1f}/{d.iloc[0].share_err_max:.1f}, "
                                           f"accuracy {d.iloc[0].accuracy:.1f} %, changes/true {d.iloc[0].changes_found_per_true:.2f}"
                                           for sp, d in res["sweep"].items()) + ".")
    add("")
    turns_pf = pf[pf["method"] == "turns"]
    two, same = turns_pf[turns_pf["two_sexes"]], turns_pf[~turns_pf["two_sexes"]]
    add(f"`mixed` (less-heard sex, in turns at least {turns.MIXED_MIN_CONFIDENCE:g} sure, ≥ {turns.MIXED_MIN_SHARE:.0%} of the turns' time and ≥ {turns.MIXED_MIN_S:g} s): "
        f"{int(two['mixed'].sum())} of {len(two)} woman-and-man conversations, {int(same['mixed'].sum())} of {len(same)} same-sex ones.")
    s = res["single"]
    add(f"Single speakers ({s['files']} {HELD_OUT} recordings, speaker-balanced accuracy): {s['old_bacc']:.1f} % by the mean p_male, "
        f"**{s['new_bacc']:.1f} %** with turns and `mixed` ({s['mixed']} called mixed).")
    add("")
    e, h, he = res["e2e"], res["hour"], res["hour_eval"]
    add("End to end, `jobs.score --segments --jobs 2` (2 cores shared with other sessions: times are upper bounds):")
    add("")
    add("| input | audio | wall | real time × | worker peak RSS | female-share error | frame accuracy | coverage |")
    add("|---|---|---|---|---|---|---|---|")
    add(f"| {res['n']} conversations | {e['audio_s'] / 60:.1f} min | {e['wall_s']:.0f} s | {e['rtf']:.0f}× | {mib(e['peak_rss_worker'])} | (above) | | |")
    add(f"| one {res['hour_min']:g}-min broadcast | {h['audio_s'] / 60:.1f} min | {h['wall_s']:.0f} s | {h['rtf']:.0f}× | {mib(h['peak_rss_worker'])} | "
        f"{100 * he['share_err']:.1f} points | {100 * he['accuracy']:.1f} % | {100 * he['coverage']:.1f} % |")
    add("")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.conversations", description=__doc__.splitlines()[0])
    p.add_argument("--features", type=Path, default=REPO_ROOT / "bench" / "work" / "features" / "speaker_embedding",
                   help="speaker_embedding shards of the corpora, to train the champion (default: bench.run's, %(default)s)")
    p.add_argument("--tracking-uri", help="a store whose voiceclf@champion was trained without the held-out corpus (skips training)")
    p.add_argument("--n", type=int, default=60, help="conversations (default %(default)s)")
    p.add_argument("--hour-min", type=float, default=60.0, help="minutes of the long broadcast (default %(default)s)")
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench" / "work")
    p.add_argument("--out", type=Path, help="write the Markdown section here (default: print it)")
    args = p.parse_args(argv)
    if not corpora.DATA_ROOT.is_dir():
        print(f"bench: reference data not found at {corpora.DATA_ROOT}; nothing to benchmark (skipped).")
        return 0
    if not args.tracking_uri and not args.features.is_dir():
        print(f"bench: error: no features at {args.features}: run `make bench` (its accuracy section makes them) or pass --features/--tracking-uri")
        return 1
    res = run(Runner(args.workdir.resolve()), args.workdir.resolve(), features=args.features, tracking_uri=args.tracking_uri, n=args.n, hour_min=args.hour_min)
    text = markdown(res)
    if args.out:
        from voiceclf import safeio

        safeio.write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    import sys

    from bench.conversations import main as _main  # through the package, so workers import by name

    sys.exit(_main())
