"""The public face of the jobs as functions: featurize, train a grid, score — callable from a job, the demo, the
benchmark or a test.

Each flow lives in its own module (``featurize``, ``grid``, ``scoring``; the stream they share in ``extract``, the
champion rule in ``champion``, what reaches MLflow in ``run_log``); this module only names what a caller needs. A
pipeline function takes plain values, reports progress through ``on_progress`` and raises the library's own errors
(:class:`corpus.CorpusError`, :class:`shards.ShardError`, :class:`safeio.LockedError`, :class:`OutputError`, ...).
Turning those into exit codes, progress bars and one-line messages is the jobs' business (``jobs/``), so nothing
here prints.
"""
from voiceclf.extract import ModelError
from voiceclf.featurize import VARIANTS, FeaturizeSummary, featurize_dir
from voiceclf.grid import GridError, TrainError, TrainSummary, read_grid, train_grid
from voiceclf.progress import OnProgress, Progress
from voiceclf.safeio import OutputError
from voiceclf.scoring import ScoreResult, score_dirs

__all__ = ["featurize_dir", "read_grid", "train_grid", "score_dirs", "FeaturizeSummary", "TrainSummary", "ScoreResult", "Progress",
           "OnProgress", "VARIANTS", "ModelError", "OutputError", "GridError", "TrainError"]
