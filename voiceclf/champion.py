"""The champion: calibration a grid point's model carries, and whether a new winner replaces the registered champion."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from voiceclf import file_windows
from voiceclf.config import LABELS, FeatureConfig

if TYPE_CHECKING:
    from voiceclf import tracking
    from voiceclf import train as tr
    from voiceclf.dataset import Data


def champion_test_score(current: tracking.LoadedModel, data: dict[str, Data], split: dict) -> float:
    """The current champion's test_score on this run's held-out speakers.

    Its own feature config decides its input: the windows of a matching feature set when this
    run has them, else the held-out files featurized again with its config.
    """
    from voiceclf.calibration import recalibrated
    from voiceclf.metrics import evaluate, file_level
    from voiceclf.model import p_male
    from voiceclf.splits import split_masks

    match = [d for d in data.values() if d.cfg == current.cfg]
    d = match[0] if match else next(iter(data.values()))
    te = d.subset(split_masks(d, split)["test"])  # the held-out speakers' windows, of the one feature set used
    if not match:  # the champion reads another feature set: its test files, featurized with the champion's config
        te = _featurized_like(te, current.cfg)
    return evaluate(recalibrated(file_level(p_male(current.module, te.x), te), current.calibration), "test")["test_score"]


def _featurized_like(te: Data, cfg: FeatureConfig) -> Data:
    """The files of ``te`` (a Data), featurized again with ``cfg``, as a Data."""
    from voiceclf import tracking
    from voiceclf.dataset import Data

    files = pd.DataFrame({"file": te.file, "speaker": te.speaker, "corpus": te.corpus, "y": te.y}).drop_duplicates("file")
    items = [file_windows.Item(path=os.path.basename(f), source=os.path.dirname(f), corpus=c, speaker=s, label=LABELS[y])
             for f, s, c, y in files[["file", "speaker", "corpus", "y"]].itertuples(index=False)]
    results = [r for r in file_windows.featurize_batch(items, cfg) if r.n_windows]
    if not results:
        raise tracking.TrackingError("none of the held-out files gave windows with the champion's feature config")
    x = np.concatenate([r.windows.features for r in results])
    return Data.from_shards(pd.DataFrame(file_windows.window_rows(results)), x, cfg)


def decide_promotion(winner: tr.PointResult, data: dict, split: dict, force: bool, model_name: str = "voiceclf") -> tuple[bool, str]:
    """Promote only a winner at least as good as the current champion of ``model_name`` on the same held-out speakers."""
    from voiceclf import tracking

    new = winner.test["test_score"]
    try:
        current = tracking.load(tracking.champion_uri(model_name))
    except tracking.NoChampion:
        return True, "first champion"
    except tracking.TrackingError as e:
        return True, f"the current champion cannot be loaded ({e}); replaced"
    try:
        old = champion_test_score(current, data, split)
    except Exception as e:  # the old model may expect another input; it cannot then be compared, and must not block training
        return True, f"the current champion (version {current.version}) could not be evaluated on these speakers ({type(e).__name__}: {e}); replaced"
    verdict = f"test_score {new:.4f} vs the current champion (version {current.version}) {old:.4f} on the same held-out speakers"
    if new >= old - 1e-9:
        return True, verdict
    if force:
        return True, verdict + "; promoted anyway (forced)"
    return False, verdict + "; not promoted"


def calibrate_point(main: tr.PointResult, held_out: dict[str, tr.PointResult]) -> None:
    """Fit the calibration ``main``'s model will carry on the predictions for corpora left out of training
    (``held_out``: the point trained without each corpus), else on its validation speakers; its test metrics
    become those of the calibrated p (what score reports), with ``test_ece``/``xval_ece`` beside them."""
    from voiceclf import calibration
    from voiceclf import train as tr
    from voiceclf.metrics import cross_corpus_score

    raw = main.test_files
    cal, m = calibration.fit_for_point({c: r.test_files for c, r in held_out.items()}, main.val_files, raw)
    main.calibration = cal
    tr.set_test(main, calibration.recalibrated(raw, cal))
    main.test_files_raw = raw
    main.test.update({k: v for k, v in m.items() if not k.startswith("xval_")})
    main.xval = {**cross_corpus_score(held_out), **{k: v for k, v in m.items() if k.startswith("xval_")}}


