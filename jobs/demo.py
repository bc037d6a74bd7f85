"""demo: the whole job on its embedded default — no data, no server, nothing to start by hand.

Generates a synthetic corpus of training speakers and a separate folder of recordings by unseen
speakers (plus one planted bad file), featurizes both feature sets, trains the grid of jobs/grid.toml
(every point for --epochs) into the MLflow store (the embedded SQLite one unless MLFLOW_TRACKING_URI names
another), registers the champion, scores the recordings and reports how accurate it was.

    python -m jobs.demo [--workdir demo] [--speakers 24] [--clips 20] [--experiment voiceclf-demo] [--model-name voiceclf-demo]

The demo's runs and model versions go to their own experiment and registered model (``voiceclf-demo``), so a
synthetic version never sits beside real ones in ``voiceclf``; ``--experiment``/``--model-name`` change that.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from rich.markup import escape

from jobs import _cli, featurize, train
from jobs._cli import JobError
from voiceclf import pipeline, report_files, synth, tracking
from voiceclf.config import REPO_ROOT


def parse_args(argv=None) -> argparse.Namespace:
    p = _cli.parser("demo", __doc__,
                    epilog="Exit codes: 0 ok, 1 failure (also: accuracy on the unseen speakers below 0.9), 2 bad arguments, "
                    "3 WORKDIR's features are locked by another run, 130 interrupted.")
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / "demo", help="where corpus, features and report go (default %(default)s)")
    p.add_argument("--speakers", type=int, default=24, help="training speakers, half female (default %(default)s)")
    p.add_argument("--clips", type=int, default=20, help="clips per training speaker (default %(default)s)")
    p.add_argument("--epochs", type=int, default=8, help="epochs of every point of the demo grid (default %(default)s; the best epoch is kept)")
    p.add_argument("--experiment", default=tracking.DEMO_NAME, help="MLflow experiment of the demo's runs (default %(default)s)")
    p.add_argument("--model-name", default=tracking.DEMO_NAME,
                   help=f"registered model the demo's champion goes to (default %(default)s; {tracking.MODEL_NAME} is what `make score` uses)")
    _cli.add_compute_args(p, workers="parallel workers", cluster=False)
    return p.parse_args(argv)


def make_recordings(folder: Path, seed: int = 1) -> dict[str, str]:
    """Recordings by 8 speakers the model never trained on, and one planted bad file; returns path → true label."""
    if folder.exists():
        shutil.rmtree(folder)
    df = synth.make_corpus(folder, speakers=8, clips=5, seed=seed, first_speaker=90)
    # the labels stay outside the folder being scored: the scorer must not see them
    (folder / "audioMNIST_meta.txt").unlink()
    (folder / "90" / "broken_recording.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage, not a real header")
    return {str(folder / p): lab for p, lab in zip(df["path"], df["label"])}


def run(args: argparse.Namespace) -> int:
    _cli.setup_logging()
    compute = _cli.compute(args)
    t0 = time.perf_counter()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    step = lambda text: _cli.console.print(f"\n[bold cyan]demo ▸ {text}[/]", highlight=False)  # noqa: E731

    step(f"1/5 synthetic corpus: {args.speakers} training speakers × {args.clips} clips")
    synth.make_corpus(work / "corpus", speakers=args.speakers, clips=args.clips, seed=0, first_speaker=1)
    truth = make_recordings(work / "recordings")
    step("2/5 featurize: MFC images for the CNN and speaker embeddings for the embedding head")
    # no augmentation: the synthetic voices are clean, and the demo should take a minute
    with _cli.progress_bars() as on_progress:
        for summary in pipeline.featurize_dir([work / "corpus"], work / "features", ["mfcc_pitch", "speaker_embedding"],
                                              variants=0, **compute, on_progress=on_progress):
            featurize.report(summary)
    step("3/5 train the grid of jobs/grid.toml over both families and register the champion")
    grids = pipeline.read_grid(train.DEFAULT_GRID, {"epochs": [args.epochs]})
    with _cli.progress_bars() as on_progress:
        trained = pipeline.train_grid([work / "features"], grids, experiment=args.experiment, model_name=args.model_name, run_label="demo",
                                      **compute, on_progress=on_progress)
    train.show_table(trained.table)
    model_uri = tracking.champion_uri(args.model_name)
    _cli.console.print(escape(f"registered {args.model_name} version {trained.version} ({trained.winner.point.name}); champion: {trained.promoted} "
                              f"({trained.reason}); experiment {args.experiment}"), highlight=False, soft_wrap=True)
    step("4/5 score the recordings of unseen speakers")
    report_path = work / "report.csv"
    with _cli.progress_bars() as on_progress:
        scored = pipeline.score_dirs([work / "recordings"], model_uri=model_uri, **compute, on_progress=on_progress)
    report_files.write(scored.report, report_path)  # as the score job writes its report

    step("5/5 check the report against the synthetic labels")
    report = scored.report
    ok = report[report["status"] == "ok"].copy()
    ok["truth"] = ok["path"].map(truth)
    accuracy = float((ok["label"] == ok["truth"]).mean()) if len(ok) else 0.0
    errors = report[report["status"] != "ok"]
    _cli.console.print(json.dumps({
        "report": str(report_path), "files": len(report), "scored": len(ok),
        "accuracy_on_unseen_speakers": round(accuracy, 4), "error_rows": errors["path"].tolist(),
        "seconds": round(time.perf_counter() - t0, 1),
    }, indent=2), highlight=False, markup=False)
    _cli.console.print(escape(f"next: `make ui` to compare the runs (experiment {args.experiment}); `make score DIR=<your recordings>` labels your own "
                              f"files with {tracking.MODEL_NAME}@{tracking.ALIAS} once `make train` made one (the demo's model: --model-uri {model_uri})"),
                       highlight=False, soft_wrap=True)
    if accuracy < 0.9:
        raise JobError(f"demo accuracy {accuracy:.3f} on unseen synthetic speakers is below 0.9", _cli.FAILURE)
    return _cli.OK


def main(argv=None) -> None:
    _cli.main_wrapper("demo", lambda: run(parse_args(argv)))  # library errors: exit codes of _cli's one table


if __name__ == "__main__":
    main()
