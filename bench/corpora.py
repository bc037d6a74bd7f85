"""The shared reference corpora as featurize sources, and the manifests of their subsets (--quick, a tenth).

The data is read in place: a subset is a manifest CSV in the workdir whose paths point into the shared
folder, with the corpus and speaker ids the whole corpus gives them, so results of a subset and of the
whole are about the same speakers.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import pandas as pd

from voiceclf import corpus, safeio
from voiceclf.config import REPO_ROOT

DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
#: corpus name (as featurize names it) -> source relative to DATA_ROOT
CORPORA = {"audiomnist_az": "audiomnist_az", "librispeech_100": "librispeech_100/manifest.csv", "ravdess": "ravdess/manifest.csv"}
SHORT_CLIPS = "audiomnist_az"  # 1-2 s clips: the files/s target is for clips of 1-3 s


def sources() -> dict[str, Path]:
    return {name: DATA_ROOT / rel for name, rel in CORPORA.items()}


def missing() -> list[Path]:
    return [p for p in sources().values() if not p.exists()]


def files_of(name: str) -> pd.DataFrame:
    """Every file of a corpus: abspath, corpus, speaker (the corpus's own id), label."""
    df = corpus.discover(sources()[name])
    return pd.DataFrame({"abspath": [os.path.join(s, p) for s, p in zip(df["source"], df["path"])],
                         "corpus": name, "speaker": df["speaker"], "label": df["label"]})


def write_manifest(files: pd.DataFrame, path: Path) -> Path:
    """A manifest featurize reads (path relative to the manifest, label, speaker, corpus), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = pd.DataFrame({"path": [os.path.relpath(p, path.parent) for p in files["abspath"]], "label": files["label"],
                        "speaker": files["speaker"], "corpus": files["corpus"]})
    with safeio.atomic_path(path) as tmp:  # featurize's input, not a spreadsheet's: no formula quoting
        out.to_csv(tmp, index=False)
    return path


def sample(name: str, per_sex: int, per_speaker: int, seed: int = 0) -> pd.DataFrame:
    """``per_sex`` speakers of each sex, ``per_speaker`` of their files each, drawn reproducibly."""
    files = files_of(name)
    rng = random.Random(seed)
    keep = []
    for _, spk in files.drop_duplicates("speaker").sort_values("speaker").groupby("label"):
        for s in rng.sample(sorted(spk["speaker"]), min(per_sex, len(spk))):
            mine = sorted(files.loc[files["speaker"] == s, "abspath"])
            keep += rng.sample(mine, min(per_speaker, len(mine)))
    return files[files["abspath"].isin(set(keep))].sort_values("abspath", ignore_index=True)


def quick_sources(workdir: Path, per_sex: int = 6, per_speaker: int = 10) -> dict[str, Path]:
    """One manifest per corpus: a few speakers of each sex, a few files each (the --quick data)."""
    return {name: write_manifest(sample(name, per_sex, per_speaker), workdir / "subsets" / "quick" / f"{name}.csv") for name in CORPORA}


def every_nth(srcs: dict[str, Path], n: int, out: Path) -> Path:
    """One manifest of every n-th file of the given sources (for memory: the whole against a part)."""
    parts = []
    for name, src in srcs.items():
        df = corpus.discover(src, allow_outside_paths=True)  # --quick's subset manifests point into the shared data
        df = df.iloc[::n]
        parts.append(pd.DataFrame({"abspath": [os.path.join(s, p) for s, p in zip(df["source"], df["path"])],
                                   "corpus": df["corpus"], "speaker": df["speaker"], "label": df["label"]}))
    return write_manifest(pd.concat(parts, ignore_index=True), out)


def score_folders() -> list[Path]:
    """Every corpus as folders for score (which takes folders, not manifests): the recordings featurize reads
    through ``sources()``, plus the few non-audio files beside them (error rows)."""
    return [DATA_ROOT / name for name in CORPORA]


def short_clip_set(workdir: Path, quick: bool) -> tuple[list[Path], list[Path]]:
    """The short-clip corpus for featurize and score speed: (featurize sources, score folders), the same files.

    Whole: the corpus folder for both. --quick: four speaker folders, through a manifest for featurize."""
    root = sources()[SHORT_CLIPS]
    if not quick:
        return [root], [root]
    files = files_of(SHORT_CLIPS)
    speakers = sorted(files["speaker"].unique())[:4]
    dirs = [root / s for s in speakers]
    manifest = write_manifest(files[files["speaker"].isin(speakers)], workdir / "subsets" / "quick_speed" / f"{SHORT_CLIPS}.csv")
    return [manifest], dirs
