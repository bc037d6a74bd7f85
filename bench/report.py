"""The benchmark's results as Markdown: the run, its commands, accuracy, speed and the targets missed."""
from __future__ import annotations

import datetime
import math
import os
import platform
import shlex
import sys
from pathlib import Path

from bench import loco
from bench.procs import python_shown, shown
from voiceclf.config import REPO_ROOT

TARGETS = {
    "speaker_bacc": 0.95,  # the best method, on each held-out corpus
    "short_clip_files_per_s": 100.0,  # featurize --variants 0, clips of 1-3 s, 2 cores
    "featurize_vs_loop": 3.0,  # featurize mfcc_pitch ÷ the plain loop, every corpus, end to end (issue 11)
    "featurize_cpu_vs_loop": 1.0,  # featurize mfcc_pitch CPU per file ÷ the plain loop's, every corpus (issue 11)
    "score_vs_featurize": 0.9,  # score ÷ featurize alone, same files (every corpus), end to end (issue 11)
    "memory_flat": 1.25,  # peak RSS whole ÷ a tenth
    "variant_vs_recording": 2.0,  # CPU of one augmented variant ÷ CPU of the recording itself (issue 11)
    # issue 18, the champion on each held-out corpus:
    "sex_gap": 0.02,  # women and men within 2 points
    "overlap_band": 0.90,  # speaker-balanced accuracy in the F0 overlap band
    "ece": 0.02,  # expected calibration error
    "acc_at_0.9": 0.99, "kept_at_0.9": 0.90,  # files at confidence >= 0.9: at least 99 % right while at least 90 % of files
    "flow_total_s": 360.0,  # issue 22: make features + make train, default grid, the three corpora, 2 cores (s)
}


def mib(n: int | None) -> str:
    return "n/a" if not n else f"{n / 2**20:,.0f} MiB"


def rates(values) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def ok_mark(passed: bool) -> str:
    return "met" if passed else "**MISSED**"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _proc_field(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.lower().startswith(key.lower()):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> str:
    mem = _proc_field("/proc/meminfo", "MemTotal")
    mem = f"{int(mem.split()[0]) / 2**20:.1f} GiB" if mem else "unknown"
    return f"{nproc()} CPUs (nproc), {_proc_field('/proc/cpuinfo', 'model name') or platform.processor() or 'unknown'}, {mem} RAM; {platform.system()} {platform.release()}"


def render(args, acc: dict | None, spd: dict | None, runner, started: datetime.datetime, wall: dict, cpu: dict,
           flw: dict | None = None) -> tuple[str, list[str]]:
    import librosa
    import torch

    missed: list[str] = []
    L: list[str] = ["# voiceclf benchmark", ""]
    add = L.append
    add(f"- Date: {started.isoformat(timespec='seconds')}")
    add(f"- Machine: {machine()}")
    add(f"- Software: Python {platform.python_version()}, torch {torch.__version__}, librosa {librosa.__version__}")
    add(f"- Mode: {'--quick (smoke run: a few speakers per corpus, 2 epochs, no repeats; the numbers mean nothing)' if args.quick else 'full'}; sections: {', '.join(args.sections)}")
    add(f"- Wall time: **{wall['total'] / 60:.1f} min** (" + ", ".join(f"{k} {v / 60:.1f} min" for k, v in wall.items() if k != "total") + ")")
    busy = [f"{k}: this benchmark {v['ours_mean']:.1f}, other processes {v['others_mean']:.1f} on average (max {v['others_max']:.1f}), 1-min load ≤ {v['load_max']:.1f}"
            for k, v in cpu.items() if v]
    if busy:
        add(f"- CPU cores in use while it ran ({'; '.join(busy)}). Other processes slow a measurement down, never up: repeated timings keep the fastest.")
    add("")
    add("## Commands")
    add("")
    add("```")
    add(f"cd {REPO_ROOT} && {python_shown()} -m bench.run " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    add("```")
    add("")
    add(f"ran, from the repo root (logs in `{shown(runner.logs)}`; repeats of a command listed once):")
    add("")
    add("```")
    add("\n".join(dict.fromkeys(runner.commands)))
    add("```")
    add("")
    inproc = []
    if flw:
        inproc += ["`bench.flow.run` (`voiceclf.pipeline.featurize_dir` into a fresh folder, then `voiceclf.pipeline.train_grid` on the default grid)"]
    if acc:
        inproc += ["`bench.loco.run` (every training with `voiceclf.train.train_point`, joblib processes × 1 torch thread)", "`librosa.pyin` per recording (joblib, cached)"]
    if inproc:
        add("and, inside the benchmark process: " + ", ".join(inproc) + ".")
        add("")
    if flw:  # beside the leave-one-corpus-out table of the same run
        L += flow(flw, missed)
    if acc:
        L += accuracy(acc, missed)
    if spd:
        L += speed(spd, missed)
    add("## Targets missed")
    add("")
    add("\n".join(f"- {m}" for m in missed) if missed else "None.")
    add("")
    return "\n".join(L), missed


def flow(r: dict, missed: list[str]) -> list[str]:
    """The README's flow timed (bench/flow.py); appends to ``missed`` when the total is over the target."""
    target = TARGETS["flow_total_s"]
    ok = r["total_s"] <= target
    if not ok:
        missed.append(f"flow (make features + make train, default grid): {r['total_s']:.0f} s > {target:.0f} s")
    xval = "n/a (one training corpus)" if math.isnan(r["xval_score"]) else f"{100 * r['xval_score']:.1f} %"
    files = ", ".join(f"{n:,}" for n in dict.fromkeys(r["files"].values()))
    return ["## Time to a champion: the README's flow", "",
            f"`make features` ({files} recordings, both feature sets, `--variants {r['variants']}`) into a fresh folder, then `make train` "
            f"with the default grid (`jobs/grid.toml`, {r['points']} points, its own epochs even with --quick, where only the corpora shrink) into a temporary SQLite store, in this process through "
            f"`voiceclf.pipeline` (`featurize_dir`, `train_grid`), device `{r['device']}`. Target (issue 22): total ≤ {target:.0f} s on 2 cores.", "",
            "| features | train | total | target | winner | `xval_score` | `val_score` |", "|---|---|---|---|---|---|---|",
            f"| {r['features_s']:.0f} s | {r['train_s']:.0f} s | **{r['total_s']:.0f} s** | ≤ {target:.0f} s: {ok_mark(ok)} | "
            f"`{r['winner']}` | {xval} | {100 * r['val_score']:.1f} % |", ""]


def accuracy(acc: dict, missed: list[str]) -> list[str]:
    L: list[str] = []
    add = L.append
    stats, table, fz = acc["stats"], acc["table"], acc["featurize"]
    add("## Accuracy: leave-one-corpus-out")
    add("")
    add("Each corpus in turn is the test set, whole; the model trains on the other two and never sees a held-out speaker, in training "
        "or in any choice. Each family runs its grid of `jobs/grid.toml` as `jobs.train --holdout-corpus C` does: the training corpora's "
        "speakers split into train and validation (stratified by corpus × sex), each point keeps the epoch with the best `val_score`, and "
        "points are ranked by `xval_score` (the point trained again without each training corpus in turn, scored on it). The **champion** is "
        "the top point across families, what `jobs.train` would register. Augmented variants (featurize's default "
        f"`--variants {fz['variants']}`) are used for training only. The pitch baseline fits one threshold on the median pyin F0 of the training "
        "corpora's recordings (male below it).")
    add("")
    add("Score: **speaker-balanced accuracy** = the share of a speaker's recordings labelled right (windows pooled per recording by mean "
        "p(male)), averaged within each sex, then over the sexes. Target: ≥ 95 % on each held-out corpus for the best method.")
    add("")
    add("| corpus | recordings | speakers (female + male) | windows `mfcc_pitch` (+ augmented) | windows `speaker_embedding` (+ augmented) |")
    add("|---|---|---|---|---|")
    for r in stats.to_dict("records"):
        add(f"| {r['corpus']} | {r['files']:,} | {r['female_speakers']} + {r['male_speakers']} | {r['windows.mfcc_pitch']:,} (+ {r['augmented.mfcc_pitch']:,}) | "
            f"{r['windows.speaker_embedding']:,} (+ {r['augmented.speaker_embedding']:,}) |")
    errs = fz["mfcc_pitch"]["errors"]
    if len(errs):
        add("")
        add(f"Files without windows ({len(errs)}, in `errors.csv`): " + ", ".join(f"`{Path(p).name}` ({e})" for p, e in zip(errs["path"][:10], errs["error"][:10]))
            + (" …" if len(errs) > 10 else ""))
    add("")
    add(loco.markdown(table))
    add("")
    add("| held-out corpus | champion | target ≥ 95 % (champion) | best method | target ≥ 95 % (best method) |")
    add("|---|---|---|---|---|")
    for c, g in table.groupby("held_out", sort=True):
        champ = g[g["method"].str.startswith("champion")].iloc[0]
        methods = g[~g["method"].str.startswith("champion")]  # the champion is one of the families' picks
        top = methods.loc[methods["speaker_bacc"].idxmax()]
        c_ok, b_ok = champ["speaker_bacc"] >= TARGETS["speaker_bacc"], top["speaker_bacc"] >= TARGETS["speaker_bacc"]
        if not b_ok:
            missed.append(f"held-out {c}: best method ({top['method']}) {100 * top['speaker_bacc']:.1f} % speaker-balanced < 95 %")
        elif not c_ok:
            missed.append(f"held-out {c}: the champion ({champ['method']}) {100 * champ['speaker_bacc']:.1f} % < 95 %, though {top['method']} reaches {100 * top['speaker_bacc']:.1f} %")
        add(f"| {c} | {champ['method']}: {100 * champ['speaker_bacc']:.1f} % | {ok_mark(c_ok)} | {top['method']}: {100 * top['speaker_bacc']:.1f} % | {ok_mark(b_ok)} |")
    add("")
    add("How each pick was made (scores of the training corpora only; the held-out column is for comparison, never used to choose):")
    add("")
    add("| held-out corpus | family | picked point | epoch | `xval_score` | `val_score` | held-out |")
    add("|---|---|---|---|---|---|---|")
    for r in table[~table["method"].str.startswith("champion") & table["epoch"].notna()].to_dict("records"):
        add(f"| {r['held_out']} | {r['method']} | {r['point']} | {int(r['epoch'])} | {100 * r['xval_score']:.1f} % | {100 * r['val_score']:.1f} % | {100 * r['speaker_bacc']:.1f} % |")
    add("")
    if acc.get("hard"):
        L += hard_section(acc, missed)
    made = "; ".join(f"`{fs}` " + (f"{fz[fs]['new_files']:,} new files in {fz[fs]['wall_s']:.0f} s ({fz[fs]['rate_job']:.0f} files/s)" if fz[fs]["new_files"] else "reused")
                     for fs in ("mfcc_pitch", "speaker_embedding"))
    pitch = acc["pitch"]
    add(f"Cost: featurize ({made}); loading the shards {acc['load_s']:.0f} s; {acc['notes'][0] if acc['notes'] else 'training'}: {acc['train_s'] / 60:.1f} min; "
        f"pyin F0 of {len(pitch):,} recordings {acc['pitch_s']:.0f} s ({'computed' if any('pyin' in n for n in acc['notes']) else 'from the cache'}; "
        f"{int(pitch['f0'].isna().sum())} without a voiced frame, counted as 0 Hz). Grid points: " + "; ".join(f"`{p.name}`" for p in acc["points"]) + ".")
    add("")
    return L


def hard_section(acc: dict, missed: list[str]) -> list[str]:
    """The hard-voice view (bench/hard.py) and its targets (issue 18), for each fold's champion."""
    from bench import hard

    rows = acc["hard"]
    L = ["### Hard voices and honest confidence", "",
         f"The same held-out predictions, calibrated as `jobs.train` calibrates them (Platt scaling fitted on the training corpora's "
         f"cross-corpus predictions), split by voice and clip. Speaker-balanced accuracy (%) for: women and men apart; the **overlap band** "
         f"(women whose median F0 is below {hard.WOMAN_BELOW_HZ:.0f} Hz, men above {hard.MAN_ABOVE_HZ:.0f} Hz; a speaker's F0 is the median "
         f"over its recordings of yin's median on the loud frames, bench/voicefeat.py) and outside it; clips shorter than {hard.SHORT_S:g} s and "
         "longer. ECE: expected calibration error of the reported label (10 bins). Last columns: the share of files whose confidence "
         "reaches the bar, and their accuracy (what `--min-confidence` keeps).", "", hard.markdown(rows), ""]
    T = TARGETS
    for r in rows:
        if not r["method"].startswith("champion"):
            continue
        c = r["held_out"]
        if abs(r["women"] - r["men"]) > T["sex_gap"]:
            missed.append(f"held-out {c}: women {100 * r['women']:.1f} % vs men {100 * r['men']:.1f} % (more than {100 * T['sex_gap']:.0f} points apart)")
        if r["overlap"] < T["overlap_band"]:
            missed.append(f"held-out {c}: overlap band {100 * r['overlap']:.1f} % < {100 * T['overlap_band']:.0f} %")
        if r["ece"] > T["ece"]:
            missed.append(f"held-out {c}: ECE {r['ece']:.3f} > {T['ece']}")
        if not (r["acc@0.9"] >= T["acc_at_0.9"] and r["kept@0.9"] >= T["kept_at_0.9"]):
            missed.append(f"held-out {c}: at confidence ≥ 0.9, {100 * r['kept@0.9']:.1f} % of files kept, {100 * r['acc@0.9']:.1f} % right "
                          f"(target ≥ {100 * T['acc_at_0.9']:.0f} % right on ≥ {100 * T['kept_at_0.9']:.0f} %)")
    L.append(f"Voice measures: {acc['hard_s']:.0f} s (cached in bench/work/voice).")
    L.append("")
    return L


FS_M, FS_E = "mfcc_pitch", "speaker_embedding"


def speed(s: dict, missed: list[str]) -> list[str]:
    """The speed section: each measurement against its baseline, then CPU per file; a target missed goes to ``missed``."""
    what = {"short": "audiomnist_az, 1–2 s clips" + (", 4 speakers" if s["quick"] else ""),
            "every": "audiomnist_az + librispeech_100 + ravdess" + (", --quick subsets" if s["quick"] else "")}
    reps = f"fastest of {s['reps']}" if s["reps"] > 1 else "one run"
    L = ["## Speed", "",
         f"Each ratio is against a baseline timed in this run on this machine, on the same files. **job** = the files/s a job reports in its summary "
         "line (its parallel loop, worker start-up included; interpreter start-up and imports not), for the plain loop its own loop timing; "
         f"**end to end** = files ÷ wall clock of the whole command. Featurize runs pass `--variants 0`: a file then costs what it costs in score and "
         f"in the plain loop (the default adds training-only variants). Repeats: {reps}, interleaved (all runs listed). The plain loop "
         "(`bench/plain_loop.py`) is one process with BLAS/OpenMP on one thread, like each featurize worker.",
         "", "| measurement | value | baseline | ratio | target |", "|---|---|---|---|---|"]
    L += _featurize_rows(s, what, missed)
    L += _score_rows(s, what, missed)
    L += _variant_row(s, what, missed)
    L += _memory_rows(s, missed)
    L += _long_rows(s, missed)
    L += _cpu_table(s, missed)
    L += _speed_notes(s)
    return L


def _featurize_rows(s: dict, what: dict, missed: list[str]) -> list[str]:
    """Featurize on short clips (against its files/s target), on every corpus and on the short clips against the plain loop."""
    T, L = TARGETS, []
    short = {fs: s[f"featurize.short.{fs}"] for fs in (FS_M, FS_E)}
    loop_s, loop_a = s["loop.short"], s["loop.all"]
    for fs in (FS_M, FS_E):
        r = short[fs]
        ok = r["rate_job"] >= T["short_clip_files_per_s"]
        if not ok:
            missed.append(f"featurize `{fs}` on short clips: {r['rate_job']:.0f} files/s < 100")
        L.append(f"| featurize `{fs}`, {what['short']} ({r['files']:,} files), all cores | job **{r['rate_job']:.0f} files/s** ({rates(r['all_job'])}); end to end "
                 f"{r['rate_e2e']:.0f} ({rates(r['all_e2e'])}) | | | ≥ 100 files/s on 2 cores: {ok_mark(ok)} |")
    for fs in (FS_M, FS_E):
        r = s[f"featurize.all.{fs}"]
        ratio, e2e = r["rate_job"] / loop_a["rate_job"], r["rate_e2e"] / loop_a["rate_e2e"]
        target = ""
        if fs == FS_M:
            ok = e2e >= T["featurize_vs_loop"]
            target = f"≥ {T['featurize_vs_loop']:g}× end to end: {ok_mark(ok)}"
            if not ok:
                missed.append(f"featurize `{fs}` on every corpus: {e2e:.2f}× the plain loop end to end ({r['rate_e2e']:.0f} vs {loop_a['rate_e2e']:.0f} "
                              f"files/s; target ≥ {T['featurize_vs_loop']:g}×)")
        L.append(f"| featurize `{fs}`, {what['every']} ({r['files']:,} files), all cores | job {r['rate_job']:.0f} files/s ({rates(r['all_job'])}) | plain loop, same files: "
                 f"{loop_a['rate_job']:.0f} files/s ({rates(loop_a['all_job'])}) | {ratio:.2f}× | |")
        L.append(f"| same, end to end | {r['rate_e2e']:.0f} files/s ({rates(r['all_e2e'])}) | plain loop: {loop_a['rate_e2e']:.0f} files/s ({rates(loop_a['all_e2e'])}) | "
                 f"**{e2e:.2f}×** | {target} |")
    L.append(f"| featurize `{FS_M}`, {what['short']}, job | {short[FS_M]['rate_job']:.0f} files/s | plain loop, same files: {loop_s['rate_job']:.0f} files/s "
             f"({rates(loop_s['all_job'])}); end to end {loop_s['rate_e2e']:.0f} | {short[FS_M]['rate_job'] / loop_s['rate_job']:.2f}× (end to end "
             f"{short[FS_M]['rate_e2e'] / loop_s['rate_e2e']:.2f}×) | |")
    return L


def _score_rows(s: dict, what: dict, missed: list[str]) -> list[str]:
    """Score with each family's champion against featurize alone on the same files."""
    T, L = TARGETS, []
    for fs, fam in ((FS_M, "cnn"), (FS_E, "embedding_head")):
        # the target is on the files featurize's target is on, every corpus (issue 11: "on the same files"); on the
        # short clips, a job of a few seconds, the same fixed start-up costs weigh more: shown, not a target
        every, short, sc_all = s[f"featurize.all.{fs}"], s[f"featurize.short.{fs}"], s.get(f"score.all.{fs}")  # score.all: not in --quick runs
        cases = ((sc_all, every, what["every"], True), (s[f"score.{fs}"], short, what["short"], False)) if sc_all else ((s[f"score.{fs}"], short, what["short"], True),)
        for r, base, where, target in cases:
            ratio, e2e = r["rate_job"] / base["rate_job"], r["rate_e2e"] / base["rate_e2e"]
            ok = e2e >= T["score_vs_featurize"]
            if target and not ok:
                missed.append(f"score with a `{fam}` champion, {where}: {e2e:.2f}× featurize `{fs}` alone end to end (target ≥ {T['score_vs_featurize']:g}×)")
            L.append(f"| score, `{fam}` champion, {where} ({r['files']:,} files), all cores | job {r['rate_job']:.0f} files/s ({rates(r['all_job'])}); first file "
                     f"scored after {r['first_s']} s | featurize `{fs}` alone, same files: job {base['rate_job']:.0f} files/s | {ratio:.2f}× | |")
            L.append(f"| same, end to end | {r['rate_e2e']:.0f} files/s ({rates(r['all_e2e'])}) | featurize alone: {base['rate_e2e']:.0f} files/s | "
                     f"**{e2e:.2f}×** | " + (f"≥ {T['score_vs_featurize']:g}× end to end: {ok_mark(ok)}" if target else "(the target is on every corpus)") + " |")
    return L


def _variant_row(s: dict, what: dict, missed: list[str]) -> list[str]:
    """The CPU of one augmented variant against the recording's own (when measured)."""
    if not s.get("variant"):
        return []
    v, T = s["variant"], TARGETS
    ratio = v["variant_ms"] / v["recording_ms"]
    ok = ratio <= T["variant_vs_recording"]
    if not ok:
        missed.append(f"an augmented variant costs {ratio:.2f}× the recording's CPU (target ≤ {T['variant_vs_recording']:g}×)")
    return [f"| one augmented variant (`{FS_M}`), {what['short']}: CPU per file, one thread, in-process ({v['files']} files) | {v['variant_ms']:.2f} ms | "
            f"the recording itself: {v['recording_ms']:.2f} ms | **{ratio:.2f}×** | ≤ {T['variant_vs_recording']:g}×: {ok_mark(ok)} |"]


def _memory_rows(s: dict, missed: list[str]) -> list[str]:
    """Featurize's peak memory on every corpus against a tenth of it: flat, or it grows with the input."""
    L = []
    for fs in (FS_M, FS_E):
        w, t = s[f"featurize.all.{fs}"], s[f"featurize.tenth.{fs}"]
        ratio = w["peak_rss_tree"] / t["peak_rss_tree"] if w["peak_rss_tree"] and t["peak_rss_tree"] else float("nan")
        ok = ratio <= TARGETS["memory_flat"]
        if not ok:
            missed.append(f"featurize `{fs}` peak memory, whole ÷ a tenth = {ratio:.2f}× (not flat)")
        L.append(f"| featurize `{fs}` peak RSS (process tree), every corpus | {mib(w['peak_rss_tree'])} (largest process {mib(w['peak_rss_one'])}) | a tenth "
                 f"({t['files']:,} files, one manifest): {mib(t['peak_rss_tree'])} (largest {mib(t['peak_rss_one'])}) | **{ratio:.2f}×** | flat (≤ 1.25×): {ok_mark(ok)} |")
    return L


def _long_rows(s: dict, missed: list[str]) -> list[str]:
    """Long recordings (when measured): a worker's peak memory against its target."""
    if not s.get("long"):
        return []
    from bench.longfile import TARGET_PEAK_BYTES, lines

    for job, by_len in s["long"].items():
        for m, r in by_len.items():
            if not (r["peak_rss_worker"] and r["peak_rss_worker"] < TARGET_PEAK_BYTES):
                missed.append(f"{job} of a {m}-min file: worker peak RSS {mib(r['peak_rss_worker'])} (target < 500 MB)")
    return lines(s["long"])


def _cpu_table(s: dict, missed: list[str]) -> list[str]:
    """CPU time per file of every command against the plain loop's on the same files."""
    L = ["", "CPU time per file (user + system of the command and all its workers, lowest of the repeats): the work done, which other load on the machine barely moves.",
         "", "| command | CPU ms per file | ÷ the plain loop's on the same files | target |", "|---|---|---|---|"]
    loop_s, loop_a = s["loop.short"], s["loop.all"]
    short, every = (lambda key: s[f"featurize.short.{key}"]), (lambda key: s[f"featurize.all.{key}"])
    for name, r, base in ((f"featurize `{FS_M}`, short clips", short(FS_M), loop_s), (f"featurize `{FS_E}`, short clips", short(FS_E), loop_s),
                          ("score, `cnn` champion, short clips", s[f"score.{FS_M}"], loop_s), ("score, `embedding_head` champion, short clips", s[f"score.{FS_E}"], loop_s),
                          ("plain loop, short clips", loop_s, loop_s), (f"featurize `{FS_M}`, every corpus", every(FS_M), loop_a),
                          (f"featurize `{FS_E}`, every corpus", every(FS_E), loop_a), ("score, `cnn` champion, every corpus", s.get(f"score.all.{FS_M}"), loop_a),
                          ("score, `embedding_head` champion, every corpus", s.get(f"score.all.{FS_E}"), loop_a), ("plain loop, every corpus", loop_a, loop_a)):
        if r is None:
            continue
        target = ""
        if r is every(FS_M):
            ok = r["cpu_ms"] / base["cpu_ms"] <= TARGETS["featurize_cpu_vs_loop"]
            target = f"≤ the plain loop's: {ok_mark(ok)}"
            if not ok:
                missed.append(f"featurize `{FS_M}` on every corpus: {r['cpu_ms']:.2f} CPU ms per file, {r['cpu_ms'] / base['cpu_ms']:.2f}× the plain loop's")
        L.append(f"| {name} | {r['cpu_ms']:.2f} | {r['cpu_ms'] / base['cpu_ms']:.2f}× | {target} |")
    return L


def _speed_notes(s: dict) -> list[str]:
    """How peak memory was measured, what the speed champions are, and the score reports' rows by status."""
    ch = s["champions"]
    st = "; ".join(f"`{fs}`: " + ", ".join(f"{v} {k}" for k, v in sorted(s[f"score.{fs}"]["status"].items())) for fs in (FS_M, FS_E))
    return ["", f"Notes. Peak RSS is polled every 50 ms over the command and its worker processes (summed; shared pages count once per process). "
            f"The champions exist for speed only: a synthetic corpus (`voiceclf.synth`), featurized and trained by `jobs.train` with one grid point and one epoch "
            f"into a temporary SQLite store per family, where each is `voiceclf@champion` ({ch[FS_M]['train_wall_s']:.0f} s and {ch[FS_E]['train_wall_s']:.0f} s end to end). "
            f"Score report rows by status: {st} (non-audio files are error rows, as they are errors.csv rows in featurize).", ""]
