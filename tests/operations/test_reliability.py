"""Hostile surroundings: planted links, odd file names, duplicate content, crafted headers, full disks and broken stores."""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import one_line_failure, register, run_job, voice_clip
from voiceclf import safeio


@pytest.fixture(scope="module")
def pt2_store(tmp_path_factory):
    """A store whose champion is a genuine (untrained) pt2 model."""
    folder = tmp_path_factory.mktemp("pt2store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    register(uri)
    return uri


@pytest.fixture()
def inbox(tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    sf.write(folder / "a.wav", voice_clip(1.5), 16000, subtype="PCM_16")
    return folder


# ----------------------------------------------------------------------------- 1. planted lock files
@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo"])
def test_a_lock_path_that_is_not_a_plain_file_is_refused_and_never_written(plant, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    lock_path = out / ".voiceclf.lock"
    {"symlink": lambda: lock_path.symlink_to(victim), "hardlink": lambda: os.link(victim, lock_path),
     "fifo": lambda: os.mkfifo(lock_path)}[plant]()
    with pytest.raises(safeio.UnsafeOutputError, match="lock file"):
        with safeio.lock(out):
            pass
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("job", ["score", "featurize"])
def test_a_job_refuses_a_planted_lock_link_in_one_line(job, inbox, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    if job == "score":
        (tmp_path / ".report.csv.lock").symlink_to(victim)
        proc = run_job("score", inbox, "--out", tmp_path / "report.csv", env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'x.db'}"})
    else:
        (out := tmp_path / "features").mkdir()
        (out / ".voiceclf.lock").symlink_to(victim)
        proc = run_job("featurize", inbox, "--allow-unlabelled", "--variants", "0", "--out", out, "--jobs", "1")
    line = one_line_failure(proc, 2)
    assert "symbolic link" in line and ".lock" in line, line
    assert victim.read_text() == "precious\n"


def test_temp_files_are_written_through_their_own_descriptor(tmp_path):
    """A temp name swapped for a link while it is written: the victim is not written, nor the link renamed into place."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    with pytest.raises(safeio.UnsafeOutputError, match="replaced"):
        with safeio.atomic_file(tmp_path / "r.csv", "w") as f:
            (name,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            name.unlink()
            name.symlink_to(victim)
            f.write("report\n")
    assert victim.read_text() == "precious\n" and not (tmp_path / "r.csv").exists()


# ----------------------------------------------------------------------------- 2. names that are not UTF-8
@pytest.mark.parametrize("raw", [b"plain.wav", b"bad\xffname.wav", b"caf\xe9/\xe9t\xe9.wav", "café.wav".encode(),
                                 b"lit\\xff.wav", b"lit\\x5c\xff.wav", b"back\\slash.wav"])
def test_a_name_is_written_as_text_and_read_back_to_the_same_bytes(raw):
    name = os.fsdecode(raw)  # as os.walk lists it: surrogate escapes for bytes that are not UTF-8
    text = safeio.name_as_text(name)
    text.encode("utf-8")  # any writer takes it
    back = safeio.name_on_disk(text)
    assert (back if isinstance(back, bytes) else os.fsencode(back)) == raw
    if raw.decode("utf-8", "replace") == raw.decode("utf-8", "ignore") and b"\\x" not in raw:
        assert text == name  # a UTF-8 name without "\x" is unchanged


def non_utf8_inbox(folder: Path) -> dict[str, str]:
    """Good and bad files whose names are not UTF-8; returns the text each should be reported under → its status."""
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / "good.wav", voice_clip(1.5), 16000, subtype="PCM_16")
    b = os.fsencode(folder)
    sf.write(folder / "tmp.wav", voice_clip(1.2, f0=220), 16000, subtype="PCM_16")
    os.rename(folder / "tmp.wav", b + b"/bad\xffname.wav")
    os.mkdir(b + b"/caf\xe9")
    with open(b + b"/caf\xe9/notes\xe9.wav", "w") as f:
        f.write("not audio\n")
    os.symlink(b"/nowhere/\xfe.wav", b + b"/link\xfe.wav")
    return {"good.wav": "ok", "bad\\xffname.wav": "ok", "caf\\xe9/notes\\xe9.wav": "not_audio", "link\\xfe.wav": "broken_link"}


def test_score_reports_files_whose_names_are_not_utf8(pt2_store, tmp_path):
    expected = non_utf8_inbox(tmp_path / "in")
    proc = run_job("score", tmp_path / "in", "--out", tmp_path / "r.csv", "--jobs", "1", env={"MLFLOW_TRACKING_URI": pt2_store})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = safeio.read_csv(tmp_path / "r.csv")
    got = {os.path.relpath(p, tmp_path / "in"): (s, e.split(":")[0]) for p, s, e in zip(report["path"], report["status"], report["error"])}
    assert set(got) == set(expected), got
    for name, want in expected.items():
        assert got[name][0] == want if want == "ok" else got[name] == ("error", want), (name, got[name])
    for p in report["path"]:  # every reported path names its file
        assert os.path.lexists(safeio.name_on_disk(p)), p


def test_featurize_accounts_for_files_whose_names_are_not_utf8(tmp_path):
    from voiceclf import shards

    expected = non_utf8_inbox(tmp_path / "in")
    out = tmp_path / "f"
    proc = run_job("featurize", tmp_path / "in", "--allow-unlabelled", "--variants", "0", "--out", out, "--jobs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows, _, _ = shards.read(out, with_features=False)
    errors = shards.read_errors(out)
    assert set(rows["path"]) == {n for n, s in expected.items() if s == "ok"}
    assert dict(zip(errors["path"], errors["error"])) == {n: s for n, s in expected.items() if s != "ok"}
    again = run_job("featurize", tmp_path / "in", "--allow-unlabelled", "--variants", "0", "--out", out, "--jobs", "1")
    # the broken link has no content to hash: it alone is tried again (as for any name)
    assert again.returncode == 0 and "4 files, 3 already in" in again.stderr, again.stderr[-3000:]
    assert "reconciled" not in again.stderr


# ----------------------------------------------------------------------------- 3. one content under two paths
def accounted_paths(out: Path) -> dict[str, str]:
    """path → "rows" or its errors.csv code; a path in both, or twice, fails."""
    from voiceclf import shards

    rows, _, _ = shards.read(out, with_features=False)
    errors = shards.read_errors(out)
    assert not errors.duplicated(["source", "path"]).any(), errors
    found = {p: "rows" for p in rows.loc[rows["variant"] == 0, "path"].unique()}
    assert not set(found) & set(errors["path"]), (found, errors)
    return found | dict(zip(errors["path"], errors["error"]))


def labelled_copies(root: Path) -> None:
    """A label-folder corpus with a copy under another name, a copy under the other label and two empty files."""
    for label, f0 in (("female", 220.0), ("male", 110.0)):
        (root / label).mkdir(parents=True)
        for i in range(2):
            sf.write(root / label / f"{label}{i}.wav", voice_clip(1.5, f0=f0 + 7 * i), 16000, subtype="PCM_16")
    (root / "female" / "female0_copy.wav").write_bytes((root / "female" / "female0.wav").read_bytes())
    (root / "male" / "a_female1.wav").write_bytes((root / "female" / "female1.wav").read_bytes())  # sorts first: male/ after female/
    (root / "male" / "empty1.wav").write_bytes(b"")
    (root / "male" / "empty2.wav").write_bytes(b"")


EXPECTED = {"female/female0.wav": "rows", "female/female0_copy.wav": "duplicate", "female/female1.wav": "rows",
            "male/a_female1.wav": "duplicate", "male/male0.wav": "rows", "male/male1.wav": "rows",
            "male/empty1.wav": "empty", "male/empty2.wav": "duplicate"}


def test_every_path_of_one_content_is_accounted_for_once_and_a_label_conflict_is_reported(tmp_path):
    from voiceclf import shards

    labelled_copies(tmp_path / "c")
    out = tmp_path / "f"
    proc = run_job("featurize", tmp_path / "c", "--variants", "1", "--out", out, "--jobs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert accounted_paths(out) == EXPECTED
    errors = shards.read_errors(out).set_index("path")
    assert errors.loc["female/female0_copy.wav", "message"].startswith("duplicate of female/female0.wav")
    assert "labelled male here but female there" in errors.loc["male/a_female1.wav", "message"]
    assert "label conflict: male/a_female1.wav" in proc.stderr
    again = run_job("featurize", tmp_path / "c", "--variants", "1", "--out", out, "--jobs", "1")
    assert "nothing new: all 8 files are already in" in again.stderr, again.stderr[-3000:]
    # a copy added later, and the original deleted: the copy takes its rows, its duplicate row goes
    (tmp_path / "c" / "male" / "male1_copy.wav").write_bytes((tmp_path / "c" / "male" / "male1.wav").read_bytes())
    (tmp_path / "c" / "female" / "female0.wav").unlink()
    (tmp_path / "c" / "male" / "empty1.wav").unlink()  # the other empty file is now the one: its own reason
    third = run_job("featurize", tmp_path / "c", "--variants", "1", "--out", out, "--jobs", "1")
    assert third.returncode == 0 and "nothing new" not in third.stderr, third.stderr[-3000:]
    gone = ("female/female0.wav", "male/empty1.wav")
    want = {**{k: v for k, v in EXPECTED.items() if k not in gone}, "female/female0_copy.wav": "rows", "male/male1_copy.wav": "duplicate",
            "male/empty2.wav": "empty"}
    assert accounted_paths(out) == want
    fresh = tmp_path / "fresh"  # and all of it as a clean run has it
    assert run_job("featurize", tmp_path / "c", "--variants", "1", "--out", fresh, "--jobs", "1").returncode == 0
    assert accounted_paths(fresh) == want
    fourth = run_job("featurize", tmp_path / "c", "--variants", "1", "--out", out, "--jobs", "1")
    assert "nothing new: all 7 files are already in" in fourth.stderr, fourth.stderr[-3000:]


def test_a_run_resumed_after_a_kill_equals_a_clean_run_with_copies(tmp_path):
    """What a kill leaves (whole shards only): the original of a copy in a shard, the copy in none. The rerun gives
    the copy its duplicate row, and every row equals a clean run's."""
    import shutil

    from voiceclf import shards

    labelled_copies(tmp_path / "c")
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    assert run_job("featurize", tmp_path / "c", "--variants", "0", "--shard-rows", "1", "--out", clean, "--jobs", "1").returncode == 0
    shutil.copytree(clean, resumed)
    (first, *rest) = shards.part_paths(resumed)
    assert set(pd_read(first)["path"]) == {"female/female0.wav"}
    for p in rest:
        p.unlink()
    (resumed / shards.ERRORS).unlink()
    proc = run_job("featurize", tmp_path / "c", "--variants", "0", "--shard-rows", "1", "--out", resumed, "--jobs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert accounted_paths(resumed) == accounted_paths(clean) == {k: v for k, v in EXPECTED.items()}
    key = ["path", "window"]
    a, fa, _ = shards.read(clean)
    b, fb, _ = shards.read(resumed)
    order_a, order_b = a.sort_values(key).index, b.sort_values(key).index
    assert a.loc[order_a, key + ["label", "sha256"]].values.tolist() == b.loc[order_b, key + ["label", "sha256"]].values.tolist()
    assert np.array_equal(fa[order_a], fb[order_b])
    ea, eb = (shards.read_errors(d).sort_values("path", ignore_index=True) for d in (clean, resumed))
    assert ea.equals(eb)


def pd_read(path: Path):
    import pandas as pd

    return pd.read_parquet(path)


# ----------------------------------------------------------------------------- 5. messages are not markup
@pytest.mark.parametrize("name", ["in[/]box", "Interviews [final]", "[bold]x[/bold]"])
def test_a_path_with_brackets_is_shown_as_typed_in_one_line(name, tmp_path):
    missing = tmp_path / name
    proc = run_job("score", missing, "--out", tmp_path / "r.csv")
    line = one_line_failure(proc, 2)
    assert f"{missing}: no such directory" in line, line


def test_a_manifest_label_that_looks_like_markup_is_a_one_line_usage_error(tmp_path):
    sf.write(tmp_path / "a.wav", voice_clip(1.0), 16000, subtype="PCM_16")
    (m := tmp_path / "list.csv").write_text("path,label\na.wav,[/]\n")
    line = one_line_failure(run_job("featurize", m, "--out", tmp_path / "f", "--jobs", "1"), 2)
    assert "'[/]'" in line, line


# ----------------------------------------------------------------------------- 6. crafted headers
def wav_declaring(path: Path, rate: int) -> Path:
    """A real 2.25-s voice WAV whose header then declares ``rate`` Hz (36,000 frames at 1 Hz read as 10 hours)."""
    import struct

    sf.write(path, np.tile(voice_clip(0.75), 3), 16000, subtype="PCM_16")
    b = bytearray(path.read_bytes())
    b[24:28] = struct.pack("<I", rate)  # the fmt chunk's sample rate, then its byte rate (16-bit mono)
    b[28:32] = struct.pack("<I", rate * 2)
    path.write_bytes(bytes(b))
    return path


def test_a_header_declaring_1_hz_is_an_error_row_not_hours_of_work(pt2_store, inbox):
    wav_declaring(inbox / "onehz.wav", 1)
    assert sf.info(inbox / "onehz.wav").duration == 36000.0  # what libsndfile believes: 10 hours
    proc = run_job("score", inbox, "--out", inbox.parent / "r.csv", "--jobs", "1", env={"MLFLOW_TRACKING_URI": pt2_store}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = safeio.read_csv(inbox.parent / "r.csv").set_index("path")
    row = report.loc[str(inbox / "onehz.wav")]
    assert row["status"] == "error" and row["error"].startswith("corrupt:") and "1 Hz" in row["error"], row["error"]
    assert report.loc[str(inbox / "a.wav"), "status"] == "ok"


@pytest.mark.parametrize("limit, value, expected", [("VOICECLF_MAX_HOLD_SAMPLES", "20000", None),
                                                    ("VOICECLF_MAX_DECODE_SAMPLES", "20000", "too_big"),
                                                    ("VOICECLF_MAX_STREAM_S", "1", "too_long")])
def test_file_limits_are_checked_on_the_header(limit, value, expected, tmp_path, monkeypatch):
    """Above the samples one worker may hold, a file is streamed in blocks of that size; above the samples a file may
    decode, or the streamed length, it is an error row naming the limit."""
    from voiceclf import audio, file_windows
    from voiceclf.config import FeatureConfig

    y = np.stack([voice_clip(2.0), voice_clip(2.0)], axis=1)  # 2 s x 2 channels: 64,000 samples
    sf.write(tmp_path / "st.wav", y, 16000, subtype="PCM_16")
    monkeypatch.setenv(limit, value)
    monkeypatch.setenv("VOICECLF_MAX_HOLD_SAMPLES", "20000")  # streamed: the stream limit applies to it
    (r,) = file_windows.featurize_batch([file_windows.Item(path="st.wav", source=str(tmp_path))], FeatureConfig())
    if expected is None:
        assert r.error is None and r.n_windows > 0, r.message
        with pytest.raises(audio.TooBigError, match="VOICECLF_MAX_HOLD_SAMPLES"):
            audio.load(tmp_path / "st.wav")
        blocks = list(audio.cleaned_blocks(tmp_path / "st.wav", block_s=30.0))
        assert len(blocks) > 1  # 30-s blocks would be one: the hold limit cut them
    else:
        assert r.error == expected and limit in r.message, r.message


def test_a_bad_limit_setting_names_its_variable(monkeypatch):
    from voiceclf.config import ConfigError, FileLimits

    monkeypatch.setenv("VOICECLF_MAX_STREAM_S", "lots")
    with pytest.raises(ConfigError, match="VOICECLF_MAX_STREAM_S"):
        FileLimits.from_env()


# ----------------------------------------------------------------------------- 7. full disks, locked and damaged stores
@pytest.fixture()
def tiny_fs(tmp_path):
    """A real filesystem that fills up: a tmpfs mounted on tmp_path/fs (root only); mount options from the test."""
    mounted = []

    def mount(options: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_score_keeps_a_finished_report_its_full_disk_cannot_take(tiny_fs, pt2_store, inbox, tmp_path):
    disk = tiny_fs("size=4m,nr_inodes=2")  # room for the lock file and nothing else: the report's write fails, ENOSPC
    (rescue := tmp_path / "tmp").mkdir()
    out = disk / "report.csv"
    proc = run_job("score", inbox, "--out", out, "--jobs", "1", env={"MLFLOW_TRACKING_URI": pt2_store, "TMPDIR": rescue}, process=True)
    line = one_line_failure(proc, 1)
    assert f"cannot write {out}: No space left on device" in line and "internal error" not in line, line
    (kept,) = rescue.glob("voiceclf-report-*.csv")
    assert str(kept) in line
    report = safeio.read_csv(kept)
    assert report["path"].tolist() == [str(inbox / "a.wav")] and report["status"].tolist() == ["ok"]
    assert sorted(p.name for p in disk.iterdir()) == []  # neither a partial report nor the lock is left


def test_score_refuses_a_full_disk_before_any_work(tiny_fs, inbox):
    disk = tiny_fs("size=256k")
    (disk / "filler").write_bytes(b"\0" * (200 << 10))
    line = one_line_failure(run_job("score", inbox, "--out", disk / "r.csv", "--jobs", "1"), 2)
    assert f"cannot write {disk / 'r.csv'}" in line and "KB free" in line, line


def test_featurize_on_a_full_disk_is_one_line_naming_its_output(tiny_fs, inbox):
    disk = tiny_fs("size=4m,nr_inodes=2")
    line = one_line_failure(run_job("featurize", inbox, "--allow-unlabelled", "--variants", "0", "--out", disk, "--jobs", "1"), 1)
    assert f"cannot write {disk}: No space left on device" in line and "rerun to resume" in line, line


def test_a_locked_store_is_one_line_naming_it(pt2_store, inbox, tmp_path):
    import sqlite3

    db = sqlite3.connect(pt2_store.removeprefix("sqlite:///"), isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        proc = run_job("score", inbox, "--out", tmp_path / "r.csv", "--jobs", "1", env={"MLFLOW_TRACKING_URI": pt2_store})
    finally:
        db.execute("ROLLBACK")
        db.close()
    line = one_line_failure(proc, 1)
    assert f"tracking store {pt2_store}: database is locked" in line and "internal error" not in line, line


def test_a_damaged_store_is_one_line_naming_it(pt2_store, inbox, tmp_path):
    import shutil

    shutil.copy(pt2_store.removeprefix("sqlite:///"), damaged := tmp_path / "mlflow.db")
    data = bytearray(damaged.read_bytes())
    data[100:8192] = b"\x13" * (8192 - 100)  # the schema page and the next: what a torn write or a bad sector leaves
    damaged.write_bytes(bytes(data))
    uri = f"sqlite:///{damaged}"
    line = one_line_failure(run_job("score", inbox, "--out", tmp_path / "r.csv", "--jobs", "1", env={"MLFLOW_TRACKING_URI": uri}), 1)
    assert f"tracking store {uri}: " in line and "malformed" in line and "internal error" not in line, line


# ----------------------------------------------------------------------------- 15. no advice to allow pickles
@pytest.mark.parametrize("state_dict", [False, True])
def test_the_refusal_of_a_pickle_does_not_advise_allowing_pickles(state_dict, monkeypatch):
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    from voiceclf.tracking import logged_model

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(MlflowException) as ei:  # MLflow's own refusal, as a tampered archive gets it
        mlflow.pytorch._load_by_pickle_check(state_dict)
    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION" in str(ei.value.message)
    line = logged_model._one_line(ei.value)
    assert "MLFLOW_ALLOW_PICKLE" not in line and "pickle" in line and "never loads pickles" in line, line


# ----------------------------------------------------------------------------- 11. outside paths, resolved
@pytest.mark.parametrize("link", ["folder", "file"])
def test_a_manifest_path_through_a_link_that_leads_outside_is_refused(link, tmp_path):
    from voiceclf import corpus

    (elsewhere := tmp_path / "elsewhere").mkdir()
    sf.write(elsewhere / "x.wav", voice_clip(1.0), 16000, subtype="PCM_16")
    (m := tmp_path / "m").mkdir()
    sf.write(m / "in.wav", voice_clip(1.1), 16000, subtype="PCM_16")
    if link == "folder":
        (m / "sub").symlink_to(elsewhere)
        cell = "sub/x.wav"
    else:
        (m / "x.wav").symlink_to(elsewhere / "x.wav")
        cell = "x.wav"
    (m / "list.csv").write_text(f"path,label\nin.wav,female\n{cell},male\n")
    with pytest.raises(corpus.CorpusError, match="outside") as ei:
        corpus.discover(m / "list.csv")
    assert f"'{cell}'" in str(ei.value)
    assert sorted(corpus.discover(m / "list.csv", allow_outside_paths=True)["path"]) == sorted(["in.wav", cell])


# ----------------------------------------------------------------------------- 9, 10. one folder twice; the job's own outputs
def test_a_folder_given_twice_is_scored_once_and_the_jobs_own_outputs_are_no_rows(pt2_store, inbox, tmp_path):
    sf.write(inbox / "b.wav", voice_clip(1.2, f0=220), 16000, subtype="PCM_16")
    other = tmp_path / "x"
    other.mkdir()
    spellings = [inbox, f"{inbox}/", other / ".." / inbox.name]
    for night in (1, 2):  # the second night finds the first night's report in the folder
        proc = run_job("score", *spellings, "--out", inbox / "report.csv", "--segments", inbox / "seg.csv", "--jobs", "1",
                       env={"MLFLOW_TRACKING_URI": pt2_store})
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = safeio.read_csv(inbox / "report.csv")
        assert sorted(os.path.basename(p) for p in report["path"]) == ["a.wav", "b.wav"], (night, report["path"].tolist())
    assert "given twice" in proc.stderr


def test_featurize_lists_a_folder_given_twice_once_and_skips_its_own_output_inside_it(inbox, tmp_path):
    from voiceclf import shards

    out = inbox / "features"
    for night in (1, 2):
        proc = run_job("featurize", inbox, f"{inbox}/", "--allow-unlabelled", "--variants", "0", "--out", out, "--jobs", "1")
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows, _, _ = shards.read(out, with_features=False)
    assert rows["path"].unique().tolist() == ["a.wav"] and not rows.duplicated(["path", "window"]).any()
    assert not (out / shards.ERRORS).exists()
    assert "nothing new: all 1 files" in proc.stderr, proc.stderr[-2000:]


# ----------------------------------------------------------------------------- 13. one line per log line
def test_without_a_terminal_every_message_is_one_line_naming_its_file(tmp_path):
    import re

    (inbox := tmp_path / "in").mkdir()
    sf.write(inbox / "a.wav", voice_clip(1.2), 16000, subtype="PCM_16")
    (inbox / "two\nlines.wav").write_text("not audio\n")
    out = tmp_path / ("a-long-output-folder-name-" * 4)
    proc = run_job("featurize", inbox, "--allow-unlabelled", "--variants", "0", "--out", out, "--jobs", "1", process=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    stamped = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d voiceclf ")
    assert all(stamped.match(line) for line in lines), lines  # no record spills onto a line of its own
    assert any("two\\nlines.wav" in line and "not_audio" in line for line in lines), lines
    missing = tmp_path / ("a-folder-whose-name-is-longer-than-eighty-columns-" * 3)
    proc = run_job("score", missing, "--out", tmp_path / "r.csv", process=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and str(missing) in proc.stderr, proc.stderr


def test_a_warning_raised_while_a_file_is_decoded_names_the_file(tmp_path, caplog):
    import warnings

    from voiceclf import file_windows

    with caplog.at_level("WARNING", logger="voiceclf"):
        with file_windows.warnings_naming(str(tmp_path / "x.mp3")):
            warnings.warn("overflow encountered\nin square", RuntimeWarning)
    (record,) = caplog.records
    assert record.getMessage().startswith(f"{tmp_path / 'x.mp3'}: RuntimeWarning: overflow encountered in square")


# ----------------------------------------------------------------------------- 14. reasons that say what happened
def test_misleading_reasons_say_what_happened(tmp_path):
    import io as stdio

    from voiceclf import file_windows
    from voiceclf.config import FeatureConfig

    clip = voice_clip(1.5)
    sf.write(tmp_path / "inverted.wav", np.stack([clip, -clip], axis=1), 16000, subtype="PCM_16")
    y = voice_clip(1.5, sr=44100).astype(np.float64)
    sf.write(tmp_path / "huge_float.wav", (y / np.abs(y).max() * 3e38).astype(np.float32), 44100, subtype="FLOAT")
    buf = stdio.BytesIO()
    sf.write(buf, clip, 16000, format="WAV", subtype="PCM_16")
    wav = bytearray(buf.getvalue())
    at = wav.index(b"data")
    wav[at + 4 : at + 8] = b"\0\0\0\0"  # a recorder that never wrote the data size
    (tmp_path / "no_size.wav").write_bytes(bytes(wav))
    buf = stdio.BytesIO()
    sf.write(buf, clip, 16000, format="MP3")
    (tmp_path / "tiny.mp3").write_bytes(buf.getvalue()[:60])
    buf = stdio.BytesIO()
    sf.write(buf, clip, 16000, format="WAV", subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # a copy that stopped half-way
    names = ["inverted.wav", "huge_float.wav", "no_size.wav", "tiny.mp3", "cut.wav"]
    results = {r.item.path: r for r in file_windows.featurize_batch([file_windows.Item(path=n, source=str(tmp_path)) for n in names], FeatureConfig())}
    assert results["inverted.wav"].error == "channels_cancel" and "phase-inverted" in results["inverted.wav"].message
    assert results["huge_float.wav"].error is None and results["huge_float.wav"].n_windows > 0, results["huge_float.wav"].message
    assert results["no_size.wav"].error == "corrupt" and "declares no audio frames" in results["no_size.wav"].message
    assert results["tiny.mp3"].error == "corrupt" and "does not exist" not in results["tiny.mp3"].message
    assert "truncated" in results["tiny.mp3"].message
    assert results["cut.wav"].error == "corrupt" and "cut off" in results["cut.wav"].message, results["cut.wav"].message
