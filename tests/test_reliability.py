"""Reliability III (issue 20): planted links, odd file names, duplicate content, crafted headers, full disks."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, run_job, voice_clip
from test_security import one_line_failure, register
from voiceclf import io


@pytest.fixture(scope="module")
def pt2_store(tmp_path_factory):
    """A store whose champion is a genuine (untrained) pt2 model."""
    folder = tmp_path_factory.mktemp("pt2store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    register(uri, "pt2")
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
    with pytest.raises(io.UnsafeOutputError, match="lock file"):
        with io.lock(out):
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
    with pytest.raises(io.UnsafeOutputError, match="replaced"):
        with io.atomic_file(tmp_path / "r.csv", "w") as f:
            (name,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            name.unlink()
            name.symlink_to(victim)
            f.write("report\n")
    assert victim.read_text() == "precious\n" and not (tmp_path / "r.csv").exists()
