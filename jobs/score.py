"""score: label every file of one or more directories into a CSV report with the registered model.

Label every file under DIR (recursively) with a registered model: female, male, mixed (both sexes speak; --segments
says who speaks when) or uncertain (below --min-confidence), with the probability of that label and the seconds of
speech per sex. One report row per file (status ok / no_speech / error), written atomically.

    python -m jobs.score DIR [DIR ...] --out report.csv [--model-uri models:/voiceclf@champion]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from jobs import _cli
from voiceclf import pipeline, report_files, tracking, turn_formats

# voiceclf.train (torch) is imported where used: score starts its workers before it imports torch
# (pipeline.score_dirs), and an import at the top here would come first.


def parse_args(argv=None) -> argparse.Namespace:
    p = _cli.parser(
        "score", __doc__,
        epilog="Exit codes: 0 the batch ran (error rows included), 1 the model cannot be loaded or the tracking store reached, or the "
        "report cannot be written at the end (it is kept in the temp folder, named in the message), 2 bad arguments "
        "(missing DIR, unwritable --out, --device cuda without CUDA), 3 --out is locked by another run, 4 file errors with --fail-on-error, 130 interrupted.",
    )
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="folder(s) of recordings, walked recursively")
    p.add_argument("--out", type=Path, default=Path("report.csv"), help="report CSV (default %(default)s)")
    p.add_argument("--model-uri", default=tracking.DEFAULT_MODEL_URI, help="model to score with (default %(default)s)")
    p.add_argument("--segments", type=Path, help="also write the speech turns here: who speaks when, by sex (csv: path,start_s,end_s,label,p_male)")
    p.add_argument("--segments-format", choices=turn_formats.FORMATS, default="csv",
                   help="format of --segments: csv, rttm (diarization tools) or textgrid (Praat; one tier per recording) (default %(default)s)")
    p.add_argument("--threshold", type=float, default=0.5, help="p_male at or above which a file is labelled male (default %(default)s)")
    p.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                   help="label a file 'uncertain' when the (calibrated) probability of its label is below P (status stays ok, "
                   "p_male is kept; default %(default)s: never)")
    p.add_argument("--fail-on-error", action="store_true", help="exit 4 when any file is an error row")
    p.add_argument("--wait", action="store_true", help="if another run is writing --out, wait for it instead of exiting 3")
    p.add_argument("--tracking-uri", help="override MLFLOW_TRACKING_URI for this run")
    p.add_argument("-v", "--verbose", action="store_true")
    _cli.add_compute_args(p, workers="parallel featurize workers", device="where the model runs (featurizing stays on the CPU)")
    args = p.parse_args(argv)
    if not 0.0 < args.threshold < 1.0:
        p.error("--threshold must be between 0 and 1")
    if not 0.0 <= args.min_confidence <= 1.0:
        p.error("--min-confidence must be between 0 and 1")
    return args


def run(args: argparse.Namespace) -> int:
    _cli.setup_logging(args.verbose)
    compute = _cli.compute(args)
    # library errors (an unusable or held output, no model, --device cuda without CUDA, a disk full at the end, ...): exit codes of _cli's one table
    with report_files.reserved(args.out, args.segments, wait=args.wait), _cli.progress_bars() as on_progress:
        res = pipeline.score_dirs(args.dirs, model_uri=args.model_uri, tracking_uri=args.tracking_uri, threshold=args.threshold,
                                  min_confidence=args.min_confidence, **compute, on_progress=on_progress)
        res.report = report_files.write(res.report, args.out, res.segments, args.segments, args.segments_format)
    report = res.report
    counts = report["status"].value_counts()
    labels = report.loc[report["status"] == "ok", "label"].value_counts()
    _cli.summary_table("score summary", {
        "files": len(report), "female": int(labels.get("female", 0)), "male": int(labels.get("male", 0)), "mixed": int(labels.get("mixed", 0)),
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
