"""score: label every file of one or more directories into a CSV report with the registered model.

Label every file under DIR (recursively) as female or male with a registered model; one report row per file (status
ok / no_speech / error), written atomically.

    python -m jobs.score DIR [DIR ...] --out report.csv [--model-uri models:/voiceclf@champion]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from jobs import _cli
from jobs._cli import JobError
from voiceclf import pipeline, safeio, tracking, turn_formats

# voiceclf.train (torch) is imported where used: score starts its workers before it imports torch
# (pipeline.score_dirs), and an import at the top here would come first.


def parse_args(argv=None) -> argparse.Namespace:
    p = _cli.parser(
        "score", __doc__,
        epilog="Exit codes: 0 the batch ran (error rows included), 1 the model cannot be loaded, 2 bad arguments "
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


#: Free bytes an output's disk must have before any work: a disk already full is found before a long batch, not after.
MIN_FREE_BYTES = 1 << 20


def check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise JobError(f"cannot write {path}: folder {parent} does not exist", _cli.USAGE)
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise JobError(f"cannot write {path}: permission denied", _cli.USAGE)
    free = shutil.disk_usage(parent).free
    if free < MIN_FREE_BYTES:
        raise JobError(f"cannot write {path}: its disk has {free // 1024} KB free; free some space first", _cli.USAGE)


def write_or_rescue(table, path: Path, what: str) -> None:
    """Write a finished table to ``path``; if its disk cannot take it, keep it in the temp folder and say where.

    The work of a long batch is in this table: a full disk at the last step must not lose it."""
    try:
        safeio.write_csv(table, path, float_format="%.6g")
        return
    except OSError as e:
        reason = f"cannot write {path}: {e.strerror or e}"
    rescue = Path(tempfile.gettempdir()) / f"voiceclf-{what}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.csv"
    try:
        safeio.write_csv(table, rescue, float_format="%.6g")
    except OSError as e:
        raise JobError(f"{reason}; keeping it in {rescue.parent} failed too ({e.strerror or e}): the {what} of {len(table)} rows is lost, "
                       "free space and rerun", _cli.FAILURE) from None
    raise JobError(f"{reason}; the {what} ({len(table)} rows) was kept in {rescue}: move it into place once there is room", _cli.FAILURE)


def check_outputs(out: Path, segments: Path | None) -> None:
    """Refuse outputs that would overwrite each other or cannot be a file, before any work."""
    for flag, path in (("--out", out), ("--segments", segments)):
        if path is not None and path.is_dir():
            raise JobError(f"{flag} {path} is a folder; give a file name (e.g. {path / 'report.csv'})", _cli.USAGE)
    if segments is not None and segments.resolve() == out.resolve():
        raise JobError(f"--out and --segments are the same file ({out}); the segments would overwrite the report", _cli.USAGE)


def own_outputs(report, outputs: list[Path]):
    """``report`` without the rows of the job's own files: an output inside a scored folder (``--out inbox/report.csv``),
    its lock and its temp files would be rows, and the next night last night's report a ``not_audio`` one."""
    own, beside = set(), {}
    for path in outputs:
        real = os.path.realpath(path)
        own.add(real)
        beside.setdefault(os.path.dirname(real), []).append(re.compile(rf"^\.{re.escape(os.path.basename(real))}\.(lock|[0-9a-f]{{24}}\.tmp)$"))

    def is_own(p: str) -> bool:
        real = os.path.realpath(os.fsdecode(safeio.name_on_disk(p)))
        return real in own or any(rx.match(os.path.basename(real)) for rx in beside.get(os.path.dirname(real), []))

    mine = report["path"].map(is_own)
    return report[~mine].reset_index(drop=True) if mine.any() else report


def run(args: argparse.Namespace) -> int:
    _cli.setup_logging(args.verbose)
    compute = _cli.compute(args)
    check_outputs(args.out, args.segments)
    for path in filter(None, (args.out, args.segments)):
        check_writable(path)
    # library errors (a held lock, no model, --device cuda without CUDA, ...): exit codes of _cli's one table
    with safeio.lock(args.out, wait=args.wait), _cli.progress_bars() as on_progress:
        res = pipeline.score_dirs(args.dirs, model_uri=args.model_uri, tracking_uri=args.tracking_uri, threshold=args.threshold,
                                  min_confidence=args.min_confidence, **compute, on_progress=on_progress)
        res.report = own_outputs(res.report, [p for p in (args.out, args.segments) if p is not None])
        write_or_rescue(res.report, args.out, "report")
        if args.segments:
            try:  # the report is written by now: a segments file its disk cannot take loses only itself
                turn_formats.write(res.segments, res.report, args.segments, args.segments_format)
            except OSError as e:
                raise JobError(f"cannot write {args.segments}: {e.strerror or e}; the report {args.out} was written", _cli.FAILURE) from None
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
