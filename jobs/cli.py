"""`voiceclf featurize|train|score|demo ...`: the console script, the same entry points as `python -m jobs.<name>`."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "featurize": "audio folders → Parquet feature shards",
    "train": "grid search over the model families, tracked in MLflow; registers the champion",
    "score": "label every file of one or more folders into a CSV report with the registered model",
    "demo": "the whole job on a synthetic corpus (no data, no server)",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        usage = "usage: voiceclf {" + ",".join(COMMANDS) + "} [--help] ...\n\n" + "\n".join(f"  {k:<10} {v}" for k, v in COMMANDS.items())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"voiceclf: unknown command {argv[0]!r}\n\n{usage}", file=sys.stderr)
            sys.exit(2)
        print(usage + "\n\nEach command's --help lists its options and exit codes.")
        sys.exit(0 if argv else 2)
    job = importlib.import_module(f"jobs.{argv[0]}")
    from jobs import _cli

    _cli.OWNS_PROCESS = True
    job.main(argv[1:])


if __name__ == "__main__":
    main()
