"""score: label every file of one or more directories into a CSV report with the registered model.

    python -m jobs.score DIR [DIR ...] --out report.csv [--model-uri models:/voiceclf@champion]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from jobs import _cli
from jobs._cli import JobError, log
from voiceclf import batch, corpus, embedding, io, parallel, tracking, vad
from voiceclf.batch import Item, Result
from voiceclf.score import REPORT_COLUMNS, SEGMENT_COLUMNS, p_male, score_results
from voiceclf.train import DataError, pick_device


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
    if args.jobs == 0:
        p.error("--jobs must be -1 (all cores) or >= 1")
    return args


def collect(dirs: list[Path]) -> tuple[list[Item], list[Result]]:
    """Every file under the folders: items to featurize, and hidden files reported (never skipped silently)."""
    items, hidden = [], []
    for d in dirs:
        if not d.is_dir():
            raise JobError(f"{d}: no such directory", _cli.USAGE)
        try:
            files = corpus.list_files(d)
        except corpus.CorpusError as e:  # the folder itself cannot be listed
            raise JobError(str(e), _cli.USAGE) from None
        for rel in files:
            it = Item(path=rel, source=str(d))
            if any(part.startswith(".") for part in Path(rel).parts):
                hidden.append(Result(it, error="hidden", message=f"{it.abspath}: hidden file, not scored (rename it to score it)"))
            else:
                items.append(it)
    return items, hidden


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


def to_device(model: tracking.LoadedModel, cfg, device: torch.device):
    """The model's module on ``device``, tried on one window first: a model that cannot run there
    fails here, in one line, not in the middle of the batch."""
    try:
        module = model.module.to(device)
        p_male(module, np.zeros((1, *cfg.shape), dtype=np.float32))
    except Exception as e:
        raise JobError(f"{model.uri} cannot run on {device}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}; "
                       "try --device cpu", _cli.FAILURE) from None
    return module


def run(args: argparse.Namespace) -> int:
    _cli.setup_logging(args.verbose)
    try:
        device = pick_device(args.device)
    except DataError as e:  # --device cuda without CUDA: a usage error, as in train
        raise JobError(str(e), _cli.USAGE) from None
    check_outputs(args.out, args.segments)
    t_start = time.perf_counter()
    items, hidden = collect(args.dirs)
    for path in filter(None, (args.out, args.segments)):
        check_writable(path)
    try:
        tracking.connect(args.tracking_uri)
        model = tracking.load(args.model_uri)
    except tracking.TrackingError as e:
        raise JobError(str(e), _cli.FAILURE) from None
    cfg = model.cfg
    try:
        vad.check(cfg)  # the speech detector the model's features name, checked before any work
    except vad.VadError as e:
        raise JobError(f"{model.uri}: {e}", _cli.FAILURE) from None
    if cfg.is_embedding:  # the model was trained on one encoder's embeddings: refuse any other before work starts
        try:
            embedding.load_encoder(cfg.encoder_sha256)
        except embedding.EncoderError as e:
            raise JobError(f"{model.uri}: {e}", _cli.FAILURE) from None
    # Inference is a small share of the work (thousands of windows/s on one core); more torch threads
    # in the parent only spin against the featurize workers for the same cores.
    torch.set_num_threads(1)
    module = to_device(model, cfg, device)
    log.info("score: %d files in %s with %s (version %s, %s) on %s", len(items) + len(hidden), ", ".join(map(str, args.dirs)), model.uri, model.version or "-", cfg.feature_set, device)
    rows, segments, first_scored = [], [], None
    with _cli.output_lock(args.out, wait=args.wait):
        score = lambda results: score_results(results, module, threshold=args.threshold, model_uri=model.uri, model_version=model.version, window_s=cfg.window_s)  # noqa: E731
        rows += score(hidden)[0]
        for res in hidden:
            log.warning("hidden: %s", res.message)
        with parallel.engine(args.backend, args.scheduler), _cli.Reporter("score", len(items) + len(hidden)) as rep:
            rep.advance(len(hidden), errors=len(hidden))
            for results in parallel.imap(batch.featurize_batch, batch.batches(items, args.jobs), n_jobs=args.jobs, cfg=cfg):
                r, s = score(results)
                for row in r:
                    if row["status"] != "ok":
                        log.warning("%s: %s", row["status"], row["error"])
                rows += r
                segments += s
                first_scored = first_scored or time.perf_counter() - t_start
                rep.advance(len(results), errors=sum(x["status"] == "error" for x in r))
        report = pd.DataFrame(rows, columns=REPORT_COLUMNS).sort_values("path", kind="stable")
        io.write_csv(report, args.out, float_format="%.6g")
        if args.segments:
            io.write_csv(pd.DataFrame(segments, columns=SEGMENT_COLUMNS).sort_values(["path", "start_s"], kind="stable"), args.segments, float_format="%.6g")
    counts = report["status"].value_counts()
    labels = report.loc[report["status"] == "ok", "label"].value_counts()
    _cli.summary_table("score summary", {
        "files": len(report), "female": int(labels.get("female", 0)), "male": int(labels.get("male", 0)),
        "no speech": int(counts.get("no_speech", 0)), "errors": int(counts.get("error", 0)),
        "seconds": f"{rep.seconds:.1f}", "files/s": f"{rep.rate:.1f}",
        "first file scored after s": f"{first_scored:.1f}" if first_scored else "-", "report": str(args.out),
    })
    return _cli.FILE_ERRORS if args.fail_on_error and counts.get("error", 0) else _cli.OK


def main(argv=None) -> None:
    _cli.main_wrapper("score", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    main()
