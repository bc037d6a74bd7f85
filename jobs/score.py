"""score: label every file of one or more directories into a CSV report with the registered model.

    python -m jobs.score DIR [DIR ...] --out report.csv [--model-uri models:/voiceclf@champion]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from jobs import _cli
from jobs._cli import JobError
from voiceclf import corpus, io, parallel, pipeline, tracking
from voiceclf.config import DataError

# voiceclf.train (torch) is imported where used: score starts its workers before it imports torch
# (pipeline.score_dirs), and an import at the top here would come first.


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jobs.score",
        description="Label every file under DIR (recursively) as female or male with a registered model; "
        "one report row per file (status ok / no_speech / error), written atomically.",
        epilog="Exit codes: 0 the batch ran (error rows included), 1 the model cannot be loaded, 2 bad arguments "
        "(missing DIR, unwritable --out, --device cuda without CUDA), 3 --out is locked by another run, 4 file errors with --fail-on-error, 130 interrupted.",
    )
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="folder(s) of recordings, walked recursively")
    p.add_argument("--out", type=Path, default=Path("report.csv"), help="report CSV (default %(default)s)")
    p.add_argument("--model-uri", default=tracking.DEFAULT_MODEL_URI, help="model to score with (default %(default)s)")
    p.add_argument("--segments", type=Path, help="also write one row per 1-s window here (path,start_s,end_s,p_male,label)")
    p.add_argument("--threshold", type=float, default=0.5, help="p_male at or above which a file is labelled male (default %(default)s)")
    p.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                   help="label a file 'uncertain' when the (calibrated) probability of its label is below P (status stays ok, "
                   "p_male is kept; default %(default)s: never)")
    p.add_argument("--jobs", type=int, default=-1, help="parallel featurize workers (-1 = all cores; default %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model runs: auto = CUDA when torch sees a GPU, else the CPU (default %(default)s); featurizing stays on the CPU")
    p.add_argument("--backend", choices=parallel.BACKENDS, default="loky", help="joblib backend (default %(default)s)")
    p.add_argument("--scheduler", help="Dask scheduler address for --backend dask")
    p.add_argument("--fail-on-error", action="store_true", help="exit 4 when any file is an error row")
    p.add_argument("--wait", action="store_true", help="if another run is writing --out, wait for it instead of exiting 3")
    p.add_argument("--tracking-uri", help="override MLFLOW_TRACKING_URI for this run")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if not 0.0 < args.threshold < 1.0:
        p.error("--threshold must be between 0 and 1")
    if not 0.0 <= args.min_confidence <= 1.0:
        p.error("--min-confidence must be between 0 and 1")
    if args.jobs == 0:
        p.error("--jobs must be -1 (all cores) or >= 1")
    return args


def check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise JobError(f"cannot write {path}: folder {parent} does not exist", _cli.USAGE)
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise JobError(f"cannot write {path}: permission denied", _cli.USAGE)


def check_outputs(out: Path, segments: Path | None) -> None:
    """Refuse outputs that would overwrite each other or cannot be a file, before any work."""
    for flag, path in (("--out", out), ("--segments", segments)):
        if path is not None and path.is_dir():
            raise JobError(f"{flag} {path} is a folder; give a file name (e.g. {path / 'report.csv'})", _cli.USAGE)
    if segments is not None and segments.resolve() == out.resolve():
        raise JobError(f"--out and --segments are the same file ({out}); the segments would overwrite the report", _cli.USAGE)


def run(args: argparse.Namespace) -> int:
    _cli.setup_logging(args.verbose)
    check_outputs(args.out, args.segments)
    for path in filter(None, (args.out, args.segments)):
        check_writable(path)
    try:
        with _cli.output_lock(args.out, wait=args.wait), _cli.progress_bars() as on_progress:
            res = pipeline.score_dirs(args.dirs, model_uri=args.model_uri, tracking_uri=args.tracking_uri, threshold=args.threshold,
                                      min_confidence=args.min_confidence,
                                      jobs=args.jobs, device=args.device, backend=args.backend, scheduler=args.scheduler,
                                      on_progress=on_progress)
            io.write_csv(res.report, args.out, float_format="%.6g")
            if args.segments:
                io.write_csv(res.segments, args.segments, float_format="%.6g")
    except (corpus.CorpusError, parallel.EngineError, DataError) as e:  # DataError: --device cuda without CUDA, as in train
        raise JobError.of(e, _cli.USAGE) from None
    except (tracking.TrackingError, pipeline.ModelError) as e:
        raise JobError.of(e, _cli.FAILURE) from None
    report = res.report
    counts = report["status"].value_counts()
    labels = report.loc[report["status"] == "ok", "label"].value_counts()
    _cli.summary_table("score summary", {
        "files": len(report), "female": int(labels.get("female", 0)), "male": int(labels.get("male", 0)),
        **({"uncertain": int(labels.get("uncertain", 0))} if args.min_confidence > 0 else {}),
        "no speech": int(counts.get("no_speech", 0)), "errors": int(counts.get("error", 0)),
        "seconds": f"{res.seconds:.1f}", "files/s": f"{len(report) / max(res.loop_seconds, 1e-9):.1f}",
        "first file scored after s": f"{res.first_scored_s:.1f}" if res.first_scored_s else "-", "report": str(args.out),
    })
    return _cli.FILE_ERRORS if args.fail_on_error and counts.get("error", 0) else _cli.OK


def main(argv=None) -> None:
    _cli.main_wrapper("score", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    main()
