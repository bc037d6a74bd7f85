"""The benchmark's flow section (bench/flow.py): the README's flow timed from nothing, and its CLI."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from voiceclf.config import REPO_ROOT


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    """Two small synthetic corpora (different speakers): enough for a cross-corpus score."""
    from voiceclf import synth

    root = tmp_path_factory.mktemp("flow")
    for i, name in enumerate(("corpus_a", "corpus_b")):
        synth.make_corpus(root / name, speakers=8, clips=4, seed=i, first_speaker=1 + 8 * i)
    return [root / "corpus_a", root / "corpus_b"]


def test_flow_times_featurize_and_train_from_a_fresh_folder_and_names_a_winner(two_corpora, tmp_path):
    from bench import flow, report
    from jobs.train import DEFAULT_GRID
    from voiceclf import pipeline

    scratch = tmp_path / "scratch"
    stale = scratch / "features" / "stale.txt"  # a leftover of an earlier run: the flow starts from nothing
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    # the training's own grid file, cut to one epoch to keep the test short
    grids = pipeline.read_grid(DEFAULT_GRID, {"epochs": [1]})
    r = flow.run(two_corpora, scratch, grids=grids, variants=0, jobs=2, device="cpu", log=lambda m: None)

    assert not stale.exists()
    assert {"mfcc_pitch", "speaker_embedding"} <= {p.name for p in (scratch / "features").iterdir()}
    assert r["features_s"] > 0 and r["train_s"] > 0 and r["total_s"] == pytest.approx(r["features_s"] + r["train_s"])
    assert r["family"] in ("cnn", "embedding_head") and r["winner"]
    assert r["points"] >= 2  # both families' points of the default grid
    assert not math.isnan(r["xval_score"]) and 0.0 <= r["xval_score"] <= 1.0  # two corpora: each left out in turn
    assert not list(scratch.glob("mlruns-*"))  # the temporary store is gone

    missed: list[str] = []
    text = "\n".join(report.flow(r, missed))
    assert f"{r['total_s']:.0f} s" in text and r["winner"] in text
    assert missed == []  # a tiny corpus is far under 360 s
    missed_slow: list[str] = []
    report.flow({**r, "features_s": 300.0, "train_s": 100.0, "total_s": 400.0}, missed_slow)
    assert len(missed_slow) == 1 and "400 s > 360 s" in missed_slow[0]


def test_bench_run_help_lists_flow_and_device():
    out = subprocess.run([sys.executable, "-m", "bench.run", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "flow" in out.stdout and "--device" in out.stdout and "cuda" in out.stdout


def test_bench_device_is_parsed_and_cuda_without_cuda_is_one_line(capsys):
    import torch

    from bench import run

    assert run.parse_args(["--device", "cpu", "--sections", "flow"]).device == "cpu"
    assert run.parse_args([]).device == "auto" and "flow" in run.parse_args([]).sections
    with pytest.raises(SystemExit):
        run.parse_args(["--device", "tpu"])
    capsys.readouterr()
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: cuda is valid here")
    assert run.main(["--device", "cuda", "--sections", "flow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error: --device cuda: torch sees no CUDA device") and "\n" not in err and "Traceback" not in err
