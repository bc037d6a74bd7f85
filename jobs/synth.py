"""synth: write a deterministic synthetic voice corpus in the AudioMNIST layout.

Write a synthetic corpus of adult female and male voices for tests and demos: DIR/<NN>/<digit>_<NN>_<take>.wav
(16-bit PCM, 16 kHz) and DIR/audioMNIST_meta.txt with each speaker's gender. Speakers alternate female (odd id) /
male (even id). The same arguments always give byte-identical files.

    python -m jobs.synth --out DIR --speakers N --clips K --seed S [--first-speaker M]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jobs import _cli
from voiceclf import synth


def parse_args(argv=None) -> argparse.Namespace:
    p = _cli.parser(
        "synth", __doc__,
        epilog="Exit codes: 0 ok, 2 bad arguments or an unwritable DIR.",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="corpus root folder (created if missing)")
    p.add_argument("--speakers", type=int, default=10, metavar="N", help="number of speakers, even and >= 2 (default %(default)s)")
    p.add_argument("--clips", type=int, default=20, metavar="K", help="clips per speaker, >= 1 (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed, >= 0 (default %(default)s)")
    p.add_argument("--first-speaker", type=int, default=1, metavar="M",
                   help="id of the first speaker, >= 1; use it to add speakers to an existing corpus (default %(default)s)")
    args = p.parse_args(argv)
    if args.speakers < 2 or args.speakers % 2:
        p.error(f"--speakers must be an even number >= 2 (half female, half male), got {args.speakers}")
    if args.clips < 1:
        p.error(f"--clips must be >= 1, got {args.clips}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    if args.first_speaker < 1:
        p.error(f"--first-speaker must be >= 1, got {args.first_speaker}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        df = synth.make_corpus(args.out, args.speakers, args.clips, args.seed, first_speaker=args.first_speaker)
    except (OSError, ValueError) as e:  # e.g. DIR not writable, or an existing metadata file is corrupt
        print(f"python -m jobs.synth: error: {e}", file=sys.stderr)
        return 2
    counts = df.drop_duplicates("speaker")["label"].value_counts()
    print(
        f"synth: wrote {len(df)} files, {args.speakers} speakers "
        f"({counts.get('female', 0)} female, {counts.get('male', 0)} male) "
        f"in {time.perf_counter() - t0:.1f} s to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
