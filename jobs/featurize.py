"""featurize: audio folders → Parquet feature shards, in parallel.

    python -m jobs.featurize SRC [SRC ...] --out DIR [--jobs N] [--feature-set NAME]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from jobs import _cli
from jobs._cli import JobError, log
from voiceclf import batch, corpus, embedding, parallel, shards, vad
from voiceclf.config import FEATURE_SETS, ConfigError, FeatureConfig


def _feature_sets(text: str) -> list[str]:
    sets = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in sets if v not in FEATURE_SETS]
    if bad or not sets or len(set(sets)) != len(sets):
        raise argparse.ArgumentTypeError(f"expected one or more of {', '.join(FEATURE_SETS)} separated by commas, got {text!r}")
    return sets


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jobs.featurize",
        description="Turn labelled audio folders into Parquet feature shards (one row per 1-s window). "
        "Accepted layouts: AudioMNIST (<root>/<NN>/*.wav + audioMNIST_meta.txt), label folders "
        "(<root>/female/**, <root>/male/**), or a manifest CSV (path,label[,speaker]). "
        "Incremental: files already in OUT (by sha256) are skipped; first, the rows of OUT from these sources are brought "
        "in line with them (a moved or relabelled file takes its new path and label, a deleted one is dropped).",
        epilog="Exit codes: 0 ok (per-file errors are listed in OUT/errors.csv), 1 failure, 2 bad arguments or inputs, "
        "3 OUT is locked by another run, 4 file errors with --fail-on-error, 130 interrupted.",
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="corpus root folder or manifest .csv (several allowed)")
    p.add_argument("--out", required=True, type=Path, help="output folder for part-*.parquet and errors.csv")
    p.add_argument("--jobs", type=int, default=-1, help="parallel workers (-1 = all cores; default %(default)s)")
    p.add_argument("--feature-set", type=_feature_sets, default=[FeatureConfig.feature_set], metavar="SET[,SET]",
                   help="mfcc_pitch / mfcc_deltas: the CNN's 3x98x12 MFC images (third channel pitch bands or delta-deltas); "
                   "speaker_embedding: 256-d embeddings of a pretrained speaker encoder, for the embedding head. One set writes "
                   "its shards into OUT; several (comma-separated, e.g. mfcc_pitch,speaker_embedding: both model families) "
                   "write OUT/<set>/ each, which `jobs.train --features OUT` finds (default mfcc_pitch)")
    p.add_argument("--shard-rows", type=int, default=2048, help="windows per shard, bounds memory (default %(default)s)")
    p.add_argument("--augment", type=int, default=2, metavar="K", help="add K augmented variants of every labelled file "
                   "(gain, noise at 5-30 dB SNR, EQ, telephone band, reverb; never pitch or speed), used for training only; "
                   "0 turns it off (default %(default)s: the best setting in `make bench`)")
    p.add_argument("--allow-unlabelled", action="store_true", help="accept a plain folder of audio with no labels")
    p.add_argument("--allow-outside-paths", action="store_true", help="accept manifest paths that are absolute or lead out "
                   "of the manifest's folder (../x.wav); refused by default, as they are more often a mistake")
    p.add_argument("--fail-on-error", action="store_true", help="exit 4 when any file could not be featurized")
    p.add_argument("--backend", choices=parallel.BACKENDS, default="loky", help="joblib backend (default %(default)s)")
    p.add_argument("--scheduler", help="Dask scheduler address for --backend dask, e.g. tcp://host:8786")
    p.add_argument("--wait", action="store_true", help="if another run holds OUT, wait for it instead of exiting 3")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.augment < 0:
        p.error("--augment must be >= 0")
    if args.shard_rows < 1:
        p.error("--shard-rows must be >= 1")
    if args.jobs == 0:
        p.error("--jobs must be -1 (all cores) or >= 1")
    return args


def discover(sources: list[str], allow_unlabelled: bool, allow_outside_paths: bool = False) -> list[batch.Item]:
    items: list[batch.Item] = []
    for src in sources:
        try:
            df = corpus.discover(src, require_labels=not allow_unlabelled, allow_outside_paths=allow_outside_paths)
        except corpus.CorpusError as e:
            raise JobError(str(e), _cli.USAGE) from None
        for row in df.itertuples(index=False):
            # speaker ids are unique across corpora: two corpora's "01" are two people
            speaker = f"{row.corpus}/{row.speaker}" if row.speaker else None
            items.append(batch.Item(path=row.path, source=row.source, corpus=row.corpus, speaker=speaker, label=row.label))
    folders: dict[str, set] = {}
    for it in items:
        folders.setdefault(it.corpus, set()).add(it.source)
    for name, where in folders.items():
        if len(where) > 1:
            log.warning("corpus %r comes from %d folders (%s): equal speaker ids in them are taken as one person; "
                        "give a manifest a corpus column to tell them apart", name, len(where), ", ".join(sorted(where)))
    return items


def _few(names: list[str], limit: int = 3) -> str:
    """' (a, b, c, ... and N more)': a few names for a log line, or nothing."""
    if not names:
        return ""
    return " (" + ", ".join(names[:limit]) + (f", ... and {len(names) - limit} more" if len(names) > limit else "") + ")"


def prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JobError(f"cannot create output folder {out}: {e.strerror}", _cli.USAGE) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise JobError(f"output folder {out} is not writable", _cli.USAGE)


def run(args: argparse.Namespace) -> int:
    _cli.setup_logging(args.verbose)
    items = discover(args.sources, args.allow_unlabelled, args.allow_outside_paths)
    cfgs = [FeatureConfig.for_feature_set(fs) for fs in args.feature_set]
    for cfg in cfgs:
        try:
            vad.check(cfg)  # the speech detector these features name, checked before any work
        except vad.VadError as e:
            raise JobError(str(e), _cli.FAILURE) from None
        if cfg.is_embedding:  # the encoder these features name, checked before any work
            try:
                embedding.load_encoder(cfg.encoder_sha256)
            except embedding.EncoderError as e:
                raise JobError(str(e), _cli.FAILURE) from None
    outs = [args.out] if len(cfgs) == 1 else [args.out / cfg.feature_set for cfg in cfgs]
    for out in outs:
        prepare_out(out)
    for it in items:  # hashed once for every feature set
        try:
            it.sha256 = batch.sha256_file(it.abspath)
        except OSError:
            pass  # unreadable, a broken link, a folder: the worker makes it an errors.csv row; a rerun tries again
    codes = [featurize_set(args, items, cfg, out) for cfg, out in zip(cfgs, outs)]
    return max(codes)


def featurize_set(args: argparse.Namespace, items: list[batch.Item], cfg: FeatureConfig, out: Path) -> int:
    """One feature set of the items into one shard folder: incremental, locked, every file accounted for."""
    with _cli.output_lock(out, wait=args.wait):
        try:
            shards.verify(out)  # a damaged shard's files would count as done, its bad values trained on
        except shards.ShardError as e:
            raise JobError(str(e), _cli.USAGE) from None
        try:
            existing = shards.dir_config(out)
        except (shards.ShardError, ConfigError) as e:
            raise JobError(f"{out}: {e}", _cli.USAGE) from None
        if existing is not None and existing != cfg:
            raise JobError(f"{out} holds features made with another config ({existing.feature_set}); use another --out", _cli.USAGE)
        try:
            changed = shards.reconcile(out, items)
        except shards.ShardError as e:
            raise JobError(str(e), _cli.USAGE) from None
        if changed:
            log.warning("reconciled %s with the sources: %d file(s) relabelled%s, %d moved or updated%s, %d gone and removed%s, "
                        "%d errors.csv row(s) dropped%s; %d shard(s) rewritten", out,
                        len(changed.relabelled), _few(changed.relabelled), len(changed.updated), _few(changed.updated),
                        len(changed.removed), _few(changed.removed), len(changed.errors_dropped), _few(changed.errors_dropped),
                        changed.shards_rewritten)
        done = shards.done_hashes(out)
        todo = [it for it in items if it.sha256 not in done]
        log.info("featurize %s: %d files in %d source(s), %d already in %s, %d to do", cfg.feature_set, len(items), len(args.sources), len(items) - len(todo), out, len(todo))
        if not todo:
            _cli.console.print(f"nothing new: all {len(items)} files are already in {out}", highlight=False)
            return _cli.OK
        writer = shards.ShardWriter(out, cfg, args.shard_rows)
        windows, finished = 0, False
        try:
            with parallel.engine(args.backend, args.scheduler), _cli.Reporter(f"featurize {cfg.feature_set}", len(todo)) as rep:
                for results in parallel.imap(batch.featurize_batch, batch.batches(todo, args.jobs), n_jobs=args.jobs, cfg=cfg, augment=args.augment):
                    for r in results:
                        writer.add(r)
                        windows += r.n_windows
                    originals = [r for r in results if r.item.augment == 0]
                    for r in originals:
                        if r.error:
                            log.warning("%s: %s", r.error, r.message)
                    rep.advance(len(originals), errors=sum(r.error is not None for r in originals))
            finished = True
        except parallel.EngineError as e:
            raise JobError(str(e), _cli.USAGE) from None
        finally:
            # Shards hold whole files only, so flushing what is complete is safe even when interrupted:
            # a rerun skips those files and does the rest. Interrupted, the last file's variants may
            # still have been coming: it is left out and done again.
            writer.flush(whole_files_only=not finished)
        _cli.summary_table(f"featurize summary ({cfg.feature_set})", {
            "files": len(todo), "windows": windows, "errors": rep.errors, "shards written": len(writer.written),
            "seconds": f"{rep.seconds:.1f}", "files/s": f"{rep.rate:.1f}", "output": str(out),
        })
        if rep.errors:
            log.warning("%d file(s) gave no windows; see %s", rep.errors, out / shards.ERRORS)
        return _cli.FILE_ERRORS if args.fail_on_error and rep.errors else _cli.OK


def main(argv=None) -> None:
    _cli.main_wrapper("featurize", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    main()
