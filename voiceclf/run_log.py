"""What a grid leaves in MLflow and how it reads there: run names, descriptions, tags, a point's metrics and artifacts.

Only the calls to MLflow itself live in ``tracking``; this module decides what they are given.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from voiceclf.config import LABELS

if TYPE_CHECKING:
    from voiceclf import tracking
    from voiceclf import train as tr


def dataset_profiles(data: tr.Data, split: dict) -> dict[str, dict]:
    """Per split (as MLflow dataset contexts): ``profile`` (what the UI's Dataset drawer shows: speakers, recordings
    and hours of speech in all and per corpus and sex) and ``tags`` (the same counts as numbers, one tag each)."""
    from voiceclf.splits import split_masks

    masks = split_masks(data, split)  # the windows' labels only: the features are never copied for a profile
    every = pd.DataFrame({"file": data.file, "speaker": data.speaker, "corpus": data.corpus, "sex": np.asarray(LABELS)[data.y],
                          "speech_s": data.speech_s if data.speech_s is not None else np.nan, "real": data.variant == 0})
    out = {}
    for s, ctx in (("train", "training"), ("val", "validation"), ("test", "test")):
        part = every[masks[s]]
        windows = part[part["real"]]
        tags = {"windows": int(len(part)), "speakers_digest": hashlib.sha256("\n".join(split[s]).encode()).hexdigest()[:16]}

        def counts(g: pd.DataFrame) -> dict:
            return {"speakers": int(g["speaker"].nunique()), "recordings": int(g["file"].nunique()),
                    **({} if data.speech_s is None else {"hours": round(float(g["speech_s"].sum()) / 3600, 3)})}

        profile = {**counts(windows), "windows": int(len(part)), "augmented_windows": int((~part["real"]).sum())}
        for (c, sex), g in windows.groupby(["corpus", "sex"]):
            n = counts(g)
            tags.update({f"{c}.{sex}.{k}": v for k, v in n.items()})
            profile[f"{c} {sex}"] = " · ".join(f"{v} {'h' if k == 'hours' else k}" for k, v in n.items())
        out[ctx] = {"profile": profile, "tags": tags}
    return out


def point_metrics(res: tr.PointResult) -> dict[str, float]:
    """A grid point's summary metrics, one value each: what its run logs at step 0, and its parent when it wins."""
    # the per-epoch val_* curves end at the last epoch; best_val_* are the kept epoch's, the figures the grid compares
    return {**res.test, **res.xval, **{f"best_{k}": v for k, v in res.val.items()}, "best_epoch": res.best_epoch, "train_seconds": res.seconds}


#: Short family names for run names: the UI's run table cuts names at ~16 characters.
FAMILY_SHORT = {"cnn": "cnn", "embedding_head": "head"}


def run_names(points: Sequence[tr.GridPoint]) -> list[str]:
    """Names for the grid points' runs that tell them apart at the width of the UI's run table: the family first
    (``head pooled`` for the embedding head's lbfgs solver), then only what varies among the points trained alike
    (the feature set if it has several, then each hyperparameter whose values differ), e.g. ``cnn``,
    ``head hidden=0``, ``head hidden=64``, ``head pooled``. Names that would still be equal get ``#2``..."""
    fields = [f.name for f in dataclasses.fields(points[0]) if f.name != "solver"] if points else []

    def kind(pt: tr.GridPoint) -> tuple[str, bool]:  # an lbfgs point shares none of the epoch settings it ignores
        return pt.family, pt.solver == "lbfgs"

    names = []
    for pt in points:
        kin = [q for q in points if kind(q) == kind(pt)]
        varied = [k for k in fields if len({getattr(q, k) for q in kin}) > 1]
        parts = [FAMILY_SHORT.get(pt.family, pt.family) + (" pooled" if kind(pt)[1] else "")]
        parts += [f"{getattr(pt, k)}" if k == "feature_set" else f"{k}={getattr(pt, k):g}" if isinstance(getattr(pt, k), float)
                  else f"{k}={getattr(pt, k)}" for k in varied]
        names.append(" ".join(parts))
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n} #{seen[n]}"
    return names


def winner_reason(winner: tr.PointResult, results: Sequence[tr.PointResult | None]) -> str:
    """The winning run's ``winner`` tag: a star (what the narrow tag column shows first), then what ranked it and by
    how much, e.g. ``★ xval_score 0.9812 (best of 3; next 0.9755)``."""
    key = "xval_score" if "xval_score" in winner.xval else "val_score"
    others = sorted((r.selection_score for r in results if r is not None and r is not winner and r.error is None and r.history), reverse=True)
    ok = 1 + len(others)
    return f"★ {key} {winner.selection_score:.4f} (best of {ok}" + (f"; next {others[0]:.4f})" if others else ")")


def grid_run_name(corpora: Sequence[str], n_points: int, label: str = "", when: float | None = None) -> str:
    """The parent run's name: ``[label ]MM-DD HH:MM corpus+corpus · N pts`` (local time), so two grids, and the
    demo's synthetic one, are told apart in the run table, which shows its first ~16 characters (the year is in
    the Created column's tooltip)."""
    stamp = time.strftime("%m-%d %H:%M", time.localtime(when))
    return f"{label + ' ' if label else ''}{stamp} {'+'.join(corpora)} · {n_points} pt{'s' if n_points != 1 else ''}"


def log_point(runs: tracking.GridRuns, run_id: str, res: tr.PointResult, data: tr.Data, split: dict) -> str:
    from voiceclf import figures

    raw = res.test_files if res.test_files_raw is None else res.test_files_raw
    artifacts = {
        "curves.png": figures.curves_figure(res.history, res.point.name, res.best_epoch),
        "confusion_matrix.png": figures.confusion_figure(res.confusion, f"test (held-out speakers), files\n{res.point.name}"),
        "reliability.png": figures.reliability_figure(raw["p"].to_numpy(), res.test_files["p"].to_numpy(), raw["y"].to_numpy(),
                                                      f"test (held-out speakers), files\n{res.point.name}"),
        "calibration.json": res.calibration.to_dict() if res.calibration else {},
        "split.json": split,
        "per_speaker.csv": res.per_speaker,
    }
    return runs.log_point(run_id, res.history, point_metrics(res), artifacts=artifacts, model=res.model, cfg=data.cfg, input_example=np.array(data.x[:2]),
                          calibration=res.calibration.to_dict() if res.calibration else None)


def summary(points, run_ids, results, winner, corpora) -> pd.DataFrame:
    rows = []
    for pt, rid, res in zip(points, run_ids, results):
        f = res.best_epoch_metrics
        row = {"winner": "*" if res is winner else "", "point": pt.name, "run_id": rid, "status": "FAILED" if res.error else "ok",
               "epoch": res.best_epoch or None, "xval_score": res.xval.get("xval_score"), "val_score": f.get("val_score"),
               "test_score": res.test.get("test_score")}
        row.update({f"test.{c}": res.test.get(f"test_speaker_bacc.{c}") for c in corpora})
        row["seconds"] = round(res.seconds, 1)
        rows.append(row)
    return pd.DataFrame(rows)


def cell(v) -> str:
    """A grid table's value as text: missing (None, NaN) empty, a float to 4 decimals (the job's table and the run's description)."""
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.4f}" if isinstance(v, float) else str(v))


def grid_markdown(table: pd.DataFrame, corpora: list[str], holdout: str | None, xval: bool) -> str:
    """The parent run's description: the grid as a Markdown table, winner marked."""
    cols = [c for c in table.columns if c != "run_id"]
    lines = [f"Grid over {', '.join(sorted({p.split()[0] for p in table['point']}))} on {', '.join(corpora)}"
             + (f"; test = held-out corpus **{holdout}**" if holdout else "") + ". Points ranked by "
             + ("`xval_score` (each training corpus left out in turn)." if xval else "`val_score` (one training corpus)."), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table[cols].itertuples(index=False):
        lines.append("| " + " | ".join(("**★**" if v == "*" else cell(v)) for v in row) + " |")
    return "\n".join(lines)


def version_markdown(winner: tr.PointResult, corpora: list[str], reason: str, xval: bool) -> str:
    """The model version's description: what it is, how it was chosen, its held-out figures per corpus."""
    t = winner.test
    per = ", ".join(f"{c} {t[f'test_speaker_bacc.{c}']:.3f}" for c in corpora if f"test_speaker_bacc.{c}" in t)
    return (f"**{winner.point.family}** on `{winner.point.feature_set}` ({winner.point.name}, epoch {winner.best_epoch}). "
            f"Chosen by {'`xval_score` ' + format(winner.xval.get('xval_score', float('nan')), '.3f') + ' (corpora left out in turn)' if xval else '`val_score` ' + format(winner.best_epoch_metrics['val_score'], '.3f')}. "
            f"Held-out speakers: test_score {t['test_score']:.3f} (speaker-balanced; per corpus: {per}); file balanced accuracy {t['test_balanced_acc']:.3f}. "
            f"Promotion: {reason}.")


