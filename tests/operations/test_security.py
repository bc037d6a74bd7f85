"""Security: hostile models in the registry, file names a spreadsheet would run, unreadable inputs, what a run leaves
beside its outputs, and make values that must stay values. (Workers outliving their job: tests/library/test_parallel.py.)"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, one_line_failure, register, run_job, voice_clip
from voiceclf import tracking


# ----------------------------------------------------------------------------- models in the registry
class OpensAFile(torch.nn.Module):
    """A "model" whose unpickling creates a file: what a hostile pickle does, harmlessly."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def pt2_store(tmp_path_factory):
    """A store whose champion (version 1) is a genuine pt2 model; returns (uri, its artifact folder)."""
    folder = tmp_path_factory.mktemp("pt2store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, register(uri)


@pytest.fixture(scope="module")
def inbox(tmp_path_factory):
    import soundfile as sf

    folder = tmp_path_factory.mktemp("inbox")
    sf.write(folder / "a.wav", voice_clip(1.5), 16000, subtype="PCM_16")
    return folder


def test_a_pickled_champion_is_refused_before_it_is_unpickled(inbox, tmp_path):
    marker = tmp_path / "unpickled"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register(uri, OpensAFile(str(marker)))
    proc = run_job("score", inbox, "--out", tmp_path / "r.csv", env={"MLFLOW_TRACKING_URI": uri})
    line = one_line_failure(proc)
    assert "not in pt2 format" in line and "model.pth" in line, line
    assert not marker.exists(), "the pickle was loaded"
    assert not (tmp_path / "r.csv").exists()
    # the payload is live: MLflow's own loader, with pickles allowed (its default), runs it
    code = f"import mlflow; mlflow.set_registry_uri({uri!r}); mlflow.pytorch.load_model('models:/voiceclf@champion')"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}, capture_output=True, timeout=300)
    assert marker.exists()


def test_a_genuine_pt2_champion_still_scores(pt2_store, inbox, tmp_path):
    uri, _ = pt2_store
    run_job("score", inbox, "--out", tmp_path / "r.csv", env={"MLFLOW_TRACKING_URI": uri}, check=True)
    assert (tmp_path / "r.csv").read_text().count("\n") == 2


def test_a_missing_model_version_says_so(pt2_store, inbox, tmp_path):
    uri, _ = pt2_store
    proc = run_job("score", inbox, "--out", tmp_path / "r.csv", "--model-uri", "models:/voiceclf/99", env={"MLFLOW_TRACKING_URI": uri})
    line = one_line_failure(proc)
    assert "version 99 of model voiceclf does not exist" in line and "versions: 1" in line, line


def test_an_unsupported_tracking_uri_is_one_line(inbox, tmp_path):
    proc = run_job("score", inbox, "--out", tmp_path / "r.csv", env={"MLFLOW_TRACKING_URI": "ftp://x"})
    assert "ftp://x" in one_line_failure(proc)


def test_a_truncated_model_archive_is_one_line(inbox, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = register(uri)
    archive = os.path.join(folder, "data", "model.pt2")
    os.truncate(archive, os.path.getsize(archive) // 2)
    proc = run_job("score", inbox, "--out", tmp_path / "r.csv", env={"MLFLOW_TRACKING_URI": uri})
    assert "model.pt2 is damaged" in one_line_failure(proc)


@pytest.mark.parametrize("damage", ["truncated", "another shape"])
def test_damaged_model_weights_are_one_line(damage, pt2_store, inbox, tmp_path):
    """Score fills the module from the safetensors beside the pt2: a file cut short, or arrays of another
    network, is refused in one line before any file is scored."""
    from voiceclf import safeio

    uri, folder = pt2_store
    weights = Path(folder) / "extra_files" / tracking.WEIGHTS_FILE
    good = weights.read_bytes()
    try:
        if damage == "truncated":
            weights.write_bytes(good[: len(good) // 2])
        else:
            safeio.write_safetensors({**safeio.read_safetensors(good), "fc2.weight": np.zeros((3, 128), np.float32)}, weights)
        proc = run_job("score", inbox, "--out", tmp_path / "r.csv", env={"MLFLOW_TRACKING_URI": uri})
    finally:
        weights.write_bytes(good)  # the module's genuine champion, for the tests that score with it
    line = one_line_failure(proc)
    assert "weights" in line and ("fc2.weight" in line if damage == "another shape" else "outside the file" in line), line
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("case", ["same file", "same file by another name", "out is a folder", "segments is a folder"])
def test_score_refuses_outputs_that_clash_before_any_work(case, inbox, tmp_path):
    report = tmp_path / "r.csv"
    args = {
        "same file": ["--out", report, "--segments", report],
        "same file by another name": ["--out", report, "--segments", tmp_path / "sub" / ".." / "r.csv"],
        "out is a folder": ["--out", tmp_path],
        "segments is a folder": ["--out", report, "--segments", tmp_path],
    }[case]
    (tmp_path / "sub").mkdir()
    # an unreachable tracking store: refusing the arguments must come before any attempt to use it
    proc = run_job("score", inbox, *args, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    line = one_line_failure(proc, 2)
    assert ("same file" in line) if case.startswith("same") else ("is a folder" in line), line
    assert not report.exists()


# ----------------------------------------------------------------------------- CSV cells a spreadsheet would run
FORMULA_NAMES = ['=HYPERLINK("evil.example","click").wav', "@SUM(1+1).wav", "+1.wav", "-2.wav"]


def raw_cells(path: Path, column: str) -> list[str]:
    import csv

    with open(path, newline="") as f:
        return [row[column] for row in csv.DictReader(f)]


def test_errors_csv_cells_cannot_be_formulas_and_a_rerun_still_skips_them(tmp_path):
    import pandas as pd
    import soundfile as sf

    from voiceclf import shards

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    sf.write(src / "good.wav", voice_clip(1.5), 16000, subtype="PCM_16")
    for name in FORMULA_NAMES[:3]:
        (src / name).write_text(f"not audio: {name}\n")  # each its own content (equal ones would be duplicate rows)
    run_job("featurize", src, "--allow-unlabelled", "--variants", "0", "--out", out, check=True)
    assert sorted(raw_cells(out / "errors.csv", "path")) == sorted("'" + n for n in FORMULA_NAMES[:3])
    assert sorted(shards.read_errors(out)["path"]) == sorted(FORMULA_NAMES[:3])
    # a rerun with one more bad file: the old rows are read back as they were, not escaped twice or duplicated
    (src / FORMULA_NAMES[3]).write_text("not audio either\n")
    rerun = run_job("featurize", src, "--allow-unlabelled", "--variants", "0", "--out", out, check=True)
    assert "4 already in" in rerun.stderr, rerun.stderr[-2000:]
    assert sorted(raw_cells(out / "errors.csv", "path")) == sorted("'" + n for n in FORMULA_NAMES)
    errors = shards.read_errors(out)
    assert sorted(errors["path"]) == sorted(FORMULA_NAMES) and set(errors["error"]) == {"not_audio"}
    assert isinstance(pd.read_csv(out / "errors.csv"), pd.DataFrame)


def test_report_cells_cannot_be_formulas_and_numbers_stay_numbers(pt2_store, tmp_path):
    import pandas as pd
    import soundfile as sf

    uri, _ = pt2_store
    inbox = tmp_path / "=inbox"  # scored by a relative path, so every path cell starts with '='
    inbox.mkdir()
    sf.write(inbox / FORMULA_NAMES[0], voice_clip(1.5), 16000, subtype="PCM_16")
    (inbox / FORMULA_NAMES[1]).write_text("not audio\n")
    proc = run_job("score", "=inbox", "--out", "r.csv", "--segments", "s.csv", env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("r.csv", "s.csv"):
        cells = raw_cells(tmp_path / name, "path")
        assert cells and all(c.startswith("'=inbox/") for c in cells), cells
    report, segments = pd.read_csv(tmp_path / "r.csv"), pd.read_csv(tmp_path / "s.csv")
    numeric = pd.api.types.is_numeric_dtype
    assert numeric(report["p_male"]) and report["p_male"].notna().sum() == 1 and numeric(report["windows"])
    assert numeric(segments["p_male"]) and numeric(segments["start_s"])


# ----------------------------------------------------------------------------- what cannot be read is a row, never a stop
DROP_FILE_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


@pytest.fixture(scope="module")
def as_user(tmp_path_factory) -> list[str]:
    """A command prefix under which permission bits apply: root drops the file-access override with setpriv."""
    if os.geteuid() != 0:
        return []
    import shutil

    if not shutil.which("setpriv"):
        pytest.skip("root without setpriv: chmod 000 cannot make a file unreadable")
    probe = tmp_path_factory.mktemp("probe") / "f"
    probe.write_text("x")
    probe.chmod(0)
    if subprocess.run([*DROP_FILE_OVERRIDE, "test", "-r", probe]).returncode != 1:
        pytest.skip("setpriv cannot drop the file-access override here")
    return DROP_FILE_OVERRIDE


def job(prefix: list[str], name: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", f"jobs.{name}", *map(str, args)], cwd=REPO, env={**os.environ, **(env or {})},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)


@pytest.fixture()
def locked_inbox(tmp_path):
    """good.wav, plus secret.wav (mode 000) and locked/ (a folder, mode 000, with a recording in it)."""
    import soundfile as sf

    src = tmp_path / "inbox"
    (src / "locked").mkdir(parents=True)
    for name in ("good.wav", "secret.wav", "locked/hidden_away.wav"):
        sf.write(src / name, voice_clip(1.5), 16000, subtype="PCM_16")
    (src / "secret.wav").chmod(0)
    (src / "locked").chmod(0)
    yield src
    (src / "locked").chmod(0o755)  # so that the test folder can be removed
    (src / "secret.wav").chmod(0o644)


def test_featurize_makes_unreadable_files_and_folders_rows_and_goes_on(as_user, locked_inbox, tmp_path):
    from voiceclf import shards

    out = tmp_path / "out"
    proc = job(as_user, "featurize", locked_inbox, "--allow-unlabelled", "--variants", "0", "--out", out)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = shards.read_errors(out).set_index("path")
    assert errors.loc["secret.wav", "error"] == "unreadable" and "Permission denied" in errors.loc["secret.wav", "message"]
    assert errors.loc["locked", "error"] == "unreadable" and "folder cannot be listed (Permission denied)" in errors.loc["locked", "message"]
    assert set(shards.read(out, with_features=False)[0]["path"]) == {"good.wav"}


def test_score_makes_unreadable_files_and_folders_error_rows(as_user, pt2_store, locked_inbox, tmp_path):
    import pandas as pd

    uri, _ = pt2_store
    proc = job(as_user, "score", locked_inbox, "--out", tmp_path / "r.csv", env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    report = pd.read_csv(tmp_path / "r.csv", keep_default_na=False).set_index("path")
    assert report.loc[str(locked_inbox / "good.wav"), "status"] == "ok"
    for name, reason in (("secret.wav", "Permission denied"), ("locked", "folder cannot be listed (Permission denied)")):
        row = report.loc[str(locked_inbox / name)]
        assert row["status"] == "error" and row["error"].startswith("unreadable: ") and reason in row["error"], row.to_dict()


@pytest.fixture()
def linked_inbox(tmp_path):
    """good.wav and every kind of link that is not a readable file; returns (folder, path → expected error code)."""
    import soundfile as sf

    src, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    (src / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    sf.write(src / "good.wav", voice_clip(1.5), 16000, subtype="PCM_16")
    sf.write(elsewhere / "far.wav", voice_clip(1.5), 16000, subtype="PCM_16")
    (src / "broken.wav").symlink_to(src / "deleted.wav")
    (src / "self.wav").symlink_to("self.wav")
    (src / "ping.wav").symlink_to("pong.wav")
    (src / "pong.wav").symlink_to("ping.wav")
    (src / "sub" / "up").symlink_to("..")
    (src / "other").symlink_to(elsewhere)
    # opening a FIFO blocks until someone writes to it; /dev/zero never ends: reported, never read
    os.mkfifo(src / "pipe.wav")
    (src / "to_pipe.wav").symlink_to("pipe.wav")
    (src / "zero.wav").symlink_to("/dev/zero")
    return src, {"broken.wav": "broken_link", "self.wav": "link_loop", "ping.wav": "link_loop", "pong.wav": "link_loop",
                 "sub/up": "link_loop", "other": "folder_link", "pipe.wav": "not_a_file", "to_pipe.wav": "not_a_file",
                 "zero.wav": "not_a_file"}


def test_featurize_makes_broken_and_looping_links_and_fifos_rows(linked_inbox, tmp_path):
    from voiceclf import shards

    src, expected = linked_inbox
    out = tmp_path / "out"
    # in a process with a timeout: were the FIFO opened, the job would hang, and must fail instead of stalling the suite
    run_job("featurize", src, "--allow-unlabelled", "--variants", "0", "--out", out, check=True, process=True, timeout=180)
    errors = shards.read_errors(out)
    assert dict(zip(errors["path"], errors["error"])) == expected
    assert all(m.startswith(str(src)) for m in errors["message"])
    assert set(shards.read(out, with_features=False)[0]["path"]) == {"good.wav"}


def test_score_makes_broken_and_looping_links_and_fifos_error_rows(linked_inbox, pt2_store, tmp_path):
    import pandas as pd

    src, expected = linked_inbox
    uri, _ = pt2_store
    run_job("score", src, "--out", tmp_path / "r.csv", env={"MLFLOW_TRACKING_URI": uri}, check=True, process=True, timeout=180)
    report = pd.read_csv(tmp_path / "r.csv", keep_default_na=False)
    got = {p[len(str(src)) + 1:]: (s, e.split(":")[0]) for p, s, e in zip(report["path"], report["status"], report["error"])}
    assert got == {"good.wav": ("ok", ""), **{p: ("error", code) for p, code in expected.items()}}


def test_list_files_lists_what_it_cannot_read_and_refuses_a_root_it_cannot_list(as_user, linked_inbox, tmp_path):
    from voiceclf import corpus

    src, expected = linked_inbox
    assert corpus.list_files(src) == sorted(["good.wav", *expected])
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        code = f"from voiceclf import corpus; corpus.list_files({str(locked)!r})"
        proc = subprocess.run([*as_user, sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
        assert "CorpusError: cannot list" in proc.stderr and "Permission denied" in proc.stderr, proc.stderr[-2000:]
    finally:
        locked.chmod(0o755)


# ----------------------------------------------------------------------------- what a run leaves beside its outputs
@pytest.mark.parametrize("umask", [0o027])  # neither the default 022 nor mkstemp's 077
def test_outputs_follow_the_umask_and_no_lock_file_is_left(umask, pt2_store, inbox, tmp_path):
    uri, _ = pt2_store
    out = tmp_path / "features"

    def run(job, *args):
        old = os.umask(umask)  # the job's process umask (in this process: outputs are written by the parent)
        try:
            return run_job(job, *args, env={"MLFLOW_TRACKING_URI": uri})
        finally:
            os.umask(old)

    (inbox_bad := tmp_path / "in").mkdir()
    (inbox_bad / "notes.wav").write_text("not audio\n")
    for src in (inbox, inbox_bad):
        proc = run("featurize", src, "--allow-unlabelled", "--variants", "0", "--out", out)
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run("score", inbox, "--out", tmp_path / "r.csv", "--segments", tmp_path / "s.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = [*out.glob("part-*.parquet"), out / "errors.csv", tmp_path / "r.csv", tmp_path / "s.csv"]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in made} == {p.name: oct(0o666 & ~umask) for p in made}
    # a run that fails inside the lock removes it as well
    proc = run("featurize", inbox, "--allow-unlabelled", "--feature-set", "mfcc_deltas", "--out", out)
    assert proc.returncode == 2 and "another config" in proc.stderr
    assert not [p.name for p in [*out.iterdir(), *tmp_path.iterdir()] if p.name.endswith(".lock")]


# ----------------------------------------------------------------------------- make
def make(*args, tmp_path: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``make ARGS`` in the repo with the job's python replaced by a stub that writes its argv to tmp_path/argv, one per line.
    ``-o STAMP``: setup counts as done (the test never reinstalls the venv)."""
    import shutil

    if not shutil.which("make"):
        pytest.skip("no make")
    stub = tmp_path / "python"
    stub.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {tmp_path / "argv"}\n')
    stub.chmod(0o755)
    return subprocess.run(["make", "-s", "-o", ".venv/.voiceclf-installed", f"PY={stub}", *args], cwd=REPO, capture_output=True, text=True,
                          check=check, env={**os.environ, "MAKEFLAGS": ""})


@pytest.mark.parametrize("target, var, flag", [("score", "DIR", None), ("score", "OUT", "--out"), ("features", "DATA", None), ("train", "FEATURES", "--features")])
def test_make_passes_a_value_as_one_word_never_as_make_or_shell_code(target, var, flag, tmp_path):
    marker = tmp_path / "ran"
    value = f"my inbox; touch {marker} `touch {marker}` $(shell touch {marker}) $$(touch {marker}) rec$2024 it's \"quoted\""
    make(target, "DIR=inbox", "DATA=corpus", f"{var}={value}", tmp_path=tmp_path)
    argv = (tmp_path / "argv").read_text().splitlines()
    assert not marker.exists()
    if var == "DATA":  # a list of corpora: each word one argument, none run as code
        assert argv[2 : 2 + len(value.split())] == value.split(), argv
    else:
        assert argv[argv.index(flag) + 1 if flag else 2] == value, argv


def test_make_n_runs_no_value_and_a_missing_value_is_named(tmp_path):
    marker = tmp_path / "PWNED"
    dry = make("-n", "score", f"DIR=x$(shell touch {marker})", tmp_path=tmp_path)
    assert not marker.exists(), dry.stdout
    proc = make("score", tmp_path=tmp_path, check=False)
    assert proc.returncode == 2 and "set DIR=<folder of recordings>" in proc.stderr, proc.stderr
    make("score", "DIR=rec$2024", "AUGMENT=3", tmp_path=tmp_path)
    assert (tmp_path / "argv").read_text().splitlines()[2] == "rec$2024"


def test_a_featurize_job_that_fails_before_its_workers_are_used_ends_in_one_line(tmp_path):
    """Its workers were started at once (parallel.prestart): a job that then finds nothing to do ends them at exit,
    without joblib's warning about unused results."""
    (tmp_path / "empty").mkdir()
    out = run_job("featurize", tmp_path / "empty", "--out", tmp_path / "f", "--allow-unlabelled", "--jobs", "2", process=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "no files found" in lines[0], lines
