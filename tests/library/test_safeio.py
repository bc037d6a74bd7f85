"""voiceclf.safeio: atomic writes and output locks, in-process (the two-process lock race is in test_ops)."""
import os
import subprocess
import sys

import pandas as pd
import pytest

from voiceclf import safeio


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_temp_file(tmp_path):
    target = tmp_path / "report.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with safeio.atomic_path(target) as tmp:
            tmp.write_text("half a rep")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv"]


def test_outputs_get_the_mode_the_umask_gives_not_mkstemps_0600(tmp_path):
    old = os.umask(0o027)
    try:
        safeio.write_text(tmp_path / "a" / "x.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "x.txt").stat().st_mode & 0o777 == 0o640


def test_formula_cells_are_neutralised_and_read_back_as_written(tmp_path):
    df = pd.DataFrame({"path": ["=HYPERLINK(\"x\").wav", "'quoted.wav", "-1.wav", "plain.wav"], "p": [0.5, -0.25, 1.0, 0.0]})
    safeio.write_csv(df, tmp_path / "r.csv")
    raw = pd.read_csv(tmp_path / "r.csv", dtype=str)
    assert raw["path"].tolist() == ["'=HYPERLINK(\"x\").wav", "''quoted.wav", "'-1.wav", "plain.wav"]
    assert raw["p"].tolist() == ["0.5", "-0.25", "1.0", "0.0"]  # numbers are left alone
    assert safeio.read_csv(tmp_path / "r.csv")["path"].tolist() == df["path"].tolist()


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_the_lock_file_goes(tmp_path):
    code = f"from voiceclf import safeio\ntry:\n    with safeio.lock({str(tmp_path)!r}):\n        pass\nexcept safeio.LockedError as e:\n    print(e.holder)\n"
    with safeio.lock(tmp_path):
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert other.stdout.strip() == str(os.getpid()), other.stderr
    assert not (tmp_path / ".voiceclf.lock").exists()
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == ""


def test_safetensors_round_trip_and_what_the_reader_refuses(tmp_path):
    import json
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((3, 5)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float32),
              "scalar_row": np.zeros((1, 0), np.float32)}
    safeio.write_safetensors(arrays, tmp_path / "a.safetensors")
    data = (tmp_path / "a.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert (8 + n) % 8 == 0 and list(json.loads(data[8 : 8 + n])) == ["w", "b", "scalar_row"]  # aligned, in order
    back = safeio.read_safetensors(data)
    assert list(back) == list(arrays) and all(np.array_equal(back[k], arrays[k]) and back[k].shape == arrays[k].shape for k in arrays)
    with pytest.raises(ValueError, match="only float32"):
        safeio.write_safetensors({"x": np.zeros(2)}, tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="outside the file"):
        safeio.read_safetensors(data[: len(data) - 4])
    with pytest.raises(ValueError, match="not a safetensors file"):
        safeio.read_safetensors(b"\x05\x00")
