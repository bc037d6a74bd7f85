"""featurize: audio folders → Parquet feature shards, in parallel.

Turn labelled audio folders into Parquet feature shards (one row per window: 1 s for mfcc_pitch and mfcc_deltas,
1.6 s for speaker_embedding). Accepted layouts: AudioMNIST (<root>/<NN>/*.wav + audioMNIST_meta.txt), label folders
(<root>/female/**, <root>/male/**), or a manifest CSV (path,label[,speaker][,corpus]; corpus defaults to the
manifest folder's name). Incremental: a file already in OUT (same source, path and sha256) is skipped, and a copy of
another file's content gets an errors.csv row `duplicate` naming it; first, the rows of OUT from
these sources are brought in line with them (a moved or relabelled file takes its new path and label, a deleted one
is dropped).

    python -m jobs.featurize SRC [SRC ...] --out DIR [--jobs N] [--feature-set NAME]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from jobs import _cli
from jobs._cli import JobError, log
from voiceclf import corpus, parallel, pipeline, shards
from voiceclf.config import FEATURE_SETS, FeatureConfig


def parse_args(argv=None) -> argparse.Namespace:
    p = _cli.parser(
        "featurize", __doc__,
        epilog="Exit codes: 0 ok (per-file errors are listed in OUT/errors.csv), 1 failure, 2 bad arguments or inputs, "
        "3 OUT is locked by another run, 4 file errors with --fail-on-error, 130 interrupted.",
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="corpus root folder or manifest .csv (several allowed)")
    p.add_argument("--out", required=True, type=Path, help="output folder for part-*.parquet and errors.csv")
    p.add_argument("--feature-set", type=_cli.comma_list(choices=FEATURE_SETS), default=[FeatureConfig.feature_set], metavar="SET[,SET]",
                   help="mfcc_pitch / mfcc_deltas: the CNN's 3x98x12 MFC images (third channel pitch bands or delta-deltas); "
                   "speaker_embedding: 256-d embeddings of a pretrained speaker encoder, for the embedding head. One set writes "
                   "its shards into OUT; several (comma-separated, e.g. mfcc_pitch,speaker_embedding: both model families) "
                   "write OUT/<set>/ each, which `jobs.train --features OUT` finds (default mfcc_pitch)")
    p.add_argument("--shard-rows", type=int, default=2048, help="windows per shard, bounds memory (default %(default)s)")
    p.add_argument("--variants", "--augment", dest="variants", type=int, default=pipeline.VARIANTS, metavar="K", help="add K augmented variants of every labelled file "
                   "(gain, noise at 5-30 dB SNR, EQ, telephone band, reverb; never pitch or speed), used for training only; "
                   "0 turns it off (default %(default)s: the best setting in `make bench`; --augment is its old name)")
    p.add_argument("--allow-unlabelled", action="store_true", help="accept a plain folder of audio with no labels")
    p.add_argument("--allow-outside-paths", action="store_true", help="accept manifest paths that are absolute or lead out "
                   "of the manifest's folder (../x.wav); refused by default, as they are more often a mistake")
    p.add_argument("--fail-on-error", action="store_true", help="exit 4 when any file could not be featurized")
    p.add_argument("--wait", action="store_true", help="if another run holds OUT, wait for it instead of exiting 3")
    p.add_argument("-v", "--verbose", action="store_true")
    _cli.add_compute_args(p, workers="parallel workers")
    args = p.parse_args(argv)
    if args.variants < 0:
        p.error("--variants must be >= 0")
    if args.shard_rows < 1:
        p.error("--shard-rows must be >= 1")
    return args


def _few(names: list[str]) -> str:
    """' (a, b, c, ... and N more)': a few names for a log line, or nothing."""
    return f" ({corpus.listing(names, limit=3)})" if names else ""


def run(args: argparse.Namespace) -> int:
    _cli.setup_logging(args.verbose)
    compute = _cli.compute(args)
    # the first feature set's workers start while this process lists and checks the sources
    parallel.prestart(args.jobs, parallel.WORKER_PRELOAD[FeatureConfig.for_feature_set(args.feature_set[0]).family], args.backend)
    try:
        with _cli.progress_bars() as on_progress:  # library errors (a held lock, an unwritable OUT, ...): exit codes of _cli's one table
            summaries = pipeline.featurize_dir(
                args.sources, args.out, args.feature_set, variants=args.variants, shard_rows=args.shard_rows, **compute,
                wait=args.wait, allow_unlabelled=args.allow_unlabelled, allow_outside_paths=args.allow_outside_paths, on_progress=on_progress)
    except OSError as e:
        if e.errno not in _cli.DISK_FULL:
            raise
        raise JobError(f"cannot write {args.out}: {e.strerror}; the whole shards written so far are kept: free space and rerun to "
                       "resume", _cli.FAILURE) from None
    errors = 0
    for s in summaries:
        report(s)
        errors += s.errors
    return _cli.FILE_ERRORS if args.fail_on_error and errors else _cli.OK


def report(s: pipeline.FeaturizeSummary) -> None:
    """What a feature set's folder got: reconciled rows, the summary, where the errors are."""
    changed = s.reconciled
    if changed:
        log.warning("reconciled %s with the sources: %d file(s) relabelled%s, %d moved or updated%s, %d gone and removed%s, "
                    "%d errors.csv row(s) dropped%s; %d shard(s) rewritten", s.out,
                    len(changed.relabelled), _few(changed.relabelled), len(changed.updated), _few(changed.updated),
                    len(changed.removed), _few(changed.removed), len(changed.errors_dropped), _few(changed.errors_dropped),
                    changed.shards_rewritten)
    if s.duplicates:
        log.warning("%d file(s) have the content of another listed file: a `duplicate` row each in %s names it",
                    s.duplicates, s.out / shards.ERRORS)
    for conflict in s.label_conflicts:
        log.warning("label conflict: %s", conflict)
    if not s.todo and not s.duplicates:
        _cli.console.print(f"nothing new: all {s.files} files are already in {escape(str(s.out))}", highlight=False, soft_wrap=True)
        return
    _cli.summary_table(f"featurize summary ({s.feature_set})", {
        "files": s.todo, "windows": s.windows, "errors": s.errors, "duplicates": s.duplicates, "shards written": s.shards_written,
        "seconds": f"{s.seconds:.1f}", "files/s": f"{s.files_per_s:.1f}", "output": str(s.out),
    })
    if s.errors:
        log.warning("%d file(s) gave no windows; see %s", s.errors, s.out / shards.ERRORS)


def main(argv=None) -> None:
    _cli.main_wrapper("featurize", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    main()
