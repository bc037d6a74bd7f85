"""The grid's points: :class:`GridPoint` (a model family on a feature set, with its hyperparameters), the one check
of a grid's values (:func:`check_grid`, whoever wrote them: a grid file, the command line, a caller) and their
expansion into points (:func:`expand`)."""
from __future__ import annotations

import dataclasses
import itertools
import numbers
from dataclasses import asdict, dataclass
from typing import Mapping

from voiceclf.config import FeatureConfig

FAMILIES = ("cnn", "embedding_head")


class GridError(ValueError):
    """A grid (file or values) that cannot be searched."""


@dataclass(frozen=True)
class GridPoint:
    """One point of the grid: a model family on a feature set and its hyperparameters."""

    feature_set: str = "mfcc_pitch"
    lr: float = 1e-3
    epochs: int = 10
    gamma: float = 0.5
    batch_size: int = 64
    step_size: int = 5  # StepLR: the seed's schedule
    weight_decay: float = 0.0
    hidden: int = 0  # embedding head: 0 = logistic regression, else one hidden layer of this width
    feature_noise: bool = True  # train-time perturbation in feature space (CNN: shift/noise/masks; head: noise)
    balance: str = "speaker"  # "speaker": every speaker weighs the same in an epoch; "class": only the sexes are balanced
    # embedding head only: "adam" trains on windows (the epochs above); "lbfgs" fits a logistic regression on one mean
    # embedding per recording (and per augmented variant) with L2 strength 1/C, to convergence (fit_pooled_logistic)
    solver: str = "adam"
    C: float = 1e-3
    # windows an epoch draws per training speaker (0: as many as the training split holds). With speaker-balanced
    # draws, what an epoch teaches is how many voices it sees, not how many windows a voice has (RAVDESS: ~760 each)
    speaker_windows: int = 0
    patience: int = 0  # stop after this many epochs without a better val_score (0: train every epoch)

    @property
    def family(self) -> str:
        return FeatureConfig.for_feature_set(self.feature_set).family

    @property
    def name(self) -> str:
        if self.solver == "lbfgs":
            return f"{self.feature_set} pooled logistic C={self.C:g}"
        extra = f" hidden={self.hidden} wd={self.weight_decay:g}" if self.family == "embedding_head" else f" gamma={self.gamma:g}"
        extra += f" spk_win={self.speaker_windows}" if self.speaker_windows else ""
        extra += f" patience={self.patience}" if self.patience else ""
        return f"{self.feature_set} lr={self.lr:g} ep={self.epochs} bs={self.batch_size}{extra}"


#: Hyperparameters a grid may list per family (each a list of values), and their types.
GRID_KEYS = {"lr": float, "epochs": int, "gamma": float, "batch_size": int, "step_size": int, "weight_decay": float,
             "hidden": int, "feature_noise": bool, "balance": str, "solver": str, "C": float, "speaker_windows": int, "patience": int}
#: The values a text hyperparameter may take.
CHOICES = {"balance": ("speaker", "class"), "solver": ("adam", "lbfgs")}
#: What an lbfgs point ignores: set to the defaults, so the grid trains each lbfgs point once
_LBFGS_IGNORES = ("lr", "epochs", "gamma", "batch_size", "step_size", "weight_decay", "feature_noise", "speaker_windows", "patience")
#: What a value of each type may be given as (bool is an int in Python: it is never taken for a number here)
_ACCEPTS = {float: numbers.Real, int: numbers.Integral, bool: bool, str: str}


def _checked(where: str, family: str, key: str, values) -> list:
    """One hyperparameter's values as a non-empty list of its type, or a GridError that names it."""
    if key not in GRID_KEYS:
        raise GridError(f"{where}: [{family}] {key} is not a hyperparameter; expected some of {sorted(GRID_KEYS)}")
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values:
        raise GridError(f"{where}: [{family}] {key} must be a non-empty list")
    kind = GRID_KEYS[key]
    for v in values:
        if not isinstance(v, _ACCEPTS[kind]) or (kind is not bool and isinstance(v, bool)):
            raise GridError(f"{where}: [{family}] {key} takes {kind.__name__} values, got {v!r}")
        if key in CHOICES and v not in CHOICES[key]:
            raise GridError(f"{where}: [{family}] {key} {v!r} is not one of {', '.join(CHOICES[key])}")
    if key == "solver" and family != "embedding_head" and "lbfgs" in values:
        raise GridError(f"{where}: [{family}] solver lbfgs fits the embedding head only (feature set speaker_embedding)")
    return [kind(v) for v in values]


def check_grid(grids: Mapping[str, Mapping], where: str = "grid") -> dict[str, dict[str, list]]:
    """Family → {hyperparameter: values}, checked and normalised: the one check of a grid, whoever made it.

    ``grids`` maps families (``cnn``, ``embedding_head``) to tables of hyperparameters (:data:`GRID_KEYS`), each a
    value or a list of values of its type. Returns the tables with every value a non-empty list cast to its type
    (an int where a float is expected becomes a float); raises :class:`GridError` naming ``where``, the table and
    the key, with what was expected and what was received.
    """
    unknown = set(grids) - set(FAMILIES)
    if unknown:
        raise GridError(f"{where}: unknown table(s) {sorted(unknown)}; expected [cnn] and/or [embedding_head]")
    out = {}
    for family, values in grids.items():
        if not isinstance(values, Mapping):
            raise GridError(f"{where}: [{family}] must be a table of hyperparameters, got {type(values).__name__}")
        out[family] = {key: _checked(where, family, key, v) for key, v in values.items()}
    return out


def expand(values: Mapping[str, list], feature_set: str) -> list[GridPoint]:
    """The points of one feature set: the cartesian product of its family's ``values`` (checked by
    :func:`check_grid`); keys not given keep their defaults. An lbfgs point is trained once, whatever the values
    it ignores."""
    family = FeatureConfig.for_feature_set(feature_set).family
    values = check_grid({family: values})[family]
    keys = sorted(values)
    points = [GridPoint(feature_set=feature_set, **dict(zip(keys, combo))) for combo in itertools.product(*(values[k] for k in keys))]
    out: list[GridPoint] = []
    for p in points:  # an lbfgs point is a logistic regression: hidden layers and the epoch settings do not apply
        if family == "cnn":  # the CNN has no hidden width or C: an override of them for every family (--hidden) adds no CNN point
            p = dataclasses.replace(p, hidden=GridPoint.hidden, C=GridPoint.C)
        elif p.solver == "lbfgs":
            if p.hidden:
                continue
            p = dataclasses.replace(p, **{k: getattr(GridPoint, k) for k in _LBFGS_IGNORES})
        else:  # and C is lbfgs's alone
            p = dataclasses.replace(p, C=GridPoint.C)
        if p not in out:
            out.append(p)
    return out


def point_params(point: GridPoint) -> dict:
    """A point's hyperparameters and family, as its MLflow run logs them."""
    return {**asdict(point), "family": point.family}
