"""What every job shares: its parser and compute arguments, exit codes, one-line errors, logs or progress bars, signals."""
from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import logging
import os
import signal
import threading
import sys
import time
import traceback
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from voiceclf import parallel, safeio

# Exit codes, the same for every job (README "Exit codes"): cron and Airflow act on them.
OK = 0  # the batch ran (rows with per-file errors included)
FAILURE = 1  # the job could not do its work (model not loadable, tracking server down, ...)
USAGE = 2  # bad arguments or inputs: missing directory, unreadable output, label problems
LOCKED = 3  # another run holds the lock on the same output
FILE_ERRORS = 4  # --fail-on-error and at least one file failed
INTERRUPTED = 130  # SIGINT/SIGTERM: nothing partial was left under a final name; rerun to finish

# soft_wrap: a message is one line whatever the width; without a terminal rich would wrap it at 80 columns
console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("voiceclf")


#: The next step after a library error that says something is missing (its ``missing`` attribute). Make
#: targets and flags are the jobs' words: the library's messages stop at the fact.
NEXT_STEP = {
    "features": "run `make features` first",
    "model": "run `make train` first (`make demo` registers voiceclf-demo instead: --model-uri models:/voiceclf-demo@champion)",
    "server": "start it (`make server`) or unset MLFLOW_TRACKING_URI to use the local store",
    "weights": "`make setup` installs them",
}


def parser(job: str, doc: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``python -m jobs.<job>``: its description is the second paragraph of the job's docstring
    ``doc`` (the first is its one line), so the module and its --help say the same."""
    paragraphs = (doc or "").split("\n\n")  # python -OO strips docstrings: no description then
    return argparse.ArgumentParser(prog=f"python -m jobs.{job}", description=paragraphs[1] if len(paragraphs) > 1 else None, epilog=epilog)


def comma_list(cast=str, choices: tuple[str, ...] | None = None):
    """An argparse ``type``: ``"a,b"`` → ``[cast("a"), cast("b")]``; with ``choices``, one or more of them, each once."""
    def parse(text: str) -> list:
        try:
            values = [cast(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {cast.__name__}, got {text!r}") from None
        if choices is not None and (not values or set(values) - set(choices) or len(set(values)) != len(values)):
            raise argparse.ArgumentTypeError(f"expected one or more of {', '.join(choices)} separated by commas, got {text!r}")
        return values
    return parse


def add_compute_args(p: argparse.ArgumentParser, *, workers: str, device: str | None = None, cluster: bool = True) -> None:
    """Where a job runs, declared once for every job: ``--jobs`` (``workers`` says what they do), ``--backend`` and
    ``--scheduler`` (``cluster``), ``--device`` (when ``device`` says where it is used). :func:`compute` checks them."""
    g = p.add_argument_group("where it runs")
    g.add_argument("--jobs", type=int, default=-1, help=f"{workers} (-1 = all cores, else a count >= 1; default %(default)s)")
    if device is not None:
        g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help=f"{device}: auto = CUDA when torch sees a GPU, else the CPU (default %(default)s)")
    if cluster:
        g.add_argument("--backend", choices=parallel.BACKENDS, default="loky", help="joblib backend: local processes (loky), "
                       "threads, or the workers of a Dask cluster (default %(default)s)")
        g.add_argument("--scheduler", metavar="ADDR", help="Dask scheduler address for --backend dask, e.g. tcp://host:8786")


def compute(args: argparse.Namespace) -> dict:
    """The compute arguments of :func:`add_compute_args` as a flow's keywords, checked by the library's own rule
    (``parallel.check``) before any work: what it refuses ends the job with exit 2, named by its flag."""
    kw = {"jobs": args.jobs}
    if hasattr(args, "device"):
        kw["device"] = args.device
    if hasattr(args, "backend"):
        kw.update(backend=args.backend, scheduler=args.scheduler)
    try:
        parallel.check(kw["jobs"], kw.get("backend", "loky"), kw.get("scheduler"))
    except parallel.EngineError as e:  # "jobs must be ..." → "--jobs must be ..."
        raise JobError(f"--{e}", USAGE) from None
    return kw


def one_line(e: Exception | str) -> str:
    """A message as one log line: a name with a newline in it (or a library's multi-line error) stays on one line."""
    return " ".join(str(e).splitlines()) if "\n" in str(e) or "\r" in str(e) else str(e)


class JobError(Exception):
    """Ends a job with a one-line message and an exit code."""

    def __init__(self, message: str, code: int = FAILURE) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def of(cls, e: Exception, code: int = FAILURE) -> "JobError":
        """A library error as a job's last line, with the next step when the error names what is missing."""
        step = NEXT_STEP.get(getattr(e, "missing", None))
        return cls(f"{e}; {step}" if step else str(e), code)


class Interrupted(BaseException):
    """Raised in the main thread on SIGTERM (SIGINT gives KeyboardInterrupt), so finally-blocks clean up."""


def interactive() -> bool:
    return console.is_terminal and not os.environ.get("CI")


class OneLineFormatter(logging.Formatter):
    """Each record is one line of a cron or Airflow log: a newline inside it (a file named with one, a library's
    multi-line message or traceback) is written as \\n, so a log reader never takes its second half for another record."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


def setup_logging(verbose: bool = False) -> None:
    """Timestamped plain lines for cron and Airflow logs; on a terminal, rich lines that print above the progress bars.

    The job owns its process's logging: handlers set up before (by an importing library, or by a job that
    ran earlier in the same process) are replaced, so the lines go to this job's stderr."""
    level = logging.DEBUG if verbose else logging.INFO
    if interactive():
        from rich.logging import RichHandler

        logging.basicConfig(level=level, format="%(message)s", datefmt="%X", handlers=[RichHandler(console=console, show_path=False)], force=True)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(OneLineFormatter("%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"))
        logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("mlflow", "alembic", "urllib3", "distributed", "numba", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # MLflow logs a database error with its traceback, then raises it; the job reports it in one line (tracking.store_error)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


_terminated: str | None = None


def _on_sigterm(signum, frame):
    # Remember it as well as raising it: an exception raised while the main thread is inside a
    # C callback (numba's JIT, ctypes) is printed and dropped, so the loops also check the flag.
    global _terminated
    _terminated = signal.Signals(signum).name
    raise Interrupted(_terminated)


def check_interrupted() -> None:
    """Raise Interrupted if a SIGTERM arrived whose exception was swallowed on the way."""
    if _terminated:
        raise Interrupted(_terminated)


#: Set by the ``voiceclf`` console script: the job it runs is the process (see main_wrapper's exit).
OWNS_PROCESS = False


def main_wrapper(job: str, run) -> None:
    """Run ``run()`` (which returns an exit code) and turn failures into one line + exit code: a :class:`JobError`'s,
    a library error's from the one table (:func:`job_error`), else an internal error's."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    # A scheduled job fails within ~15 s when its tracking server dies mid-run, instead of after MLflow's
    # default of minutes of retries. Set here, not in the library: a program that imports voiceclf keeps its own.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    try:
        code = run()
    except (KeyboardInterrupt, Interrupted) as e:
        console.print(f"voiceclf {job}: interrupted ({escape(str(e) or 'SIGINT')}); no partial output was kept, rerun to finish", highlight=False, soft_wrap=True)
        code = INTERRUPTED
    except Exception as e:
        known = e if isinstance(e, JobError) else job_error(e)
        if known is not None:
            console.print(f"[bold red]voiceclf {job}: error:[/] {escape(one_line(known))}", highlight=False, soft_wrap=True)
            code = known.code
        else:
            code = _internal_error(job, e)
    main = sys.modules.get("__main__")
    if OWNS_PROCESS or getattr(getattr(main, "__spec__", None), "name", None) == f"jobs.{job}":
        # The job is this process (python -m jobs.X), and its work is done. Leaving the interpreter collects every
        # object once more: ~1.2-1.8 s after torch and MLflow are imported, on every run. Frozen objects are left to
        # the OS instead. atexit handlers (loky's workers, logging, MLflow) still run; outputs were closed by their
        # writers. Not when a job's main is called inside another program (or the tests), whose objects it would pin.
        gc.freeze()
    sys.exit(code)


def _internal_error(job: str, e: Exception) -> int:
    """A bug: still one line for cron and Airflow, the traceback only where asked for."""
    if os.environ.get("VOICECLF_TRACEBACK"):
        console.print_exception()
    if (line := store_failure(e)) is not None:  # not a bug: the tracking store's database is locked, damaged or full
        console.print(f"[bold red]voiceclf {job}: error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    else:
        where = traceback.extract_tb(e.__traceback__)[-1]
        console.print(f"[bold red]voiceclf {job}: internal error:[/] {type(e).__name__}: {escape(str(e).splitlines()[0]) if str(e) else ''} "
                      f"(at {Path(where.filename).name}:{where.lineno}; VOICECLF_TRACEBACK=1 shows the traceback)", highlight=False, soft_wrap=True)
    return FAILURE


def _error_table() -> list[tuple[tuple[type, ...], int]]:
    """The one exception → exit-code table of every job (README "Exit codes"), first match wins. Imported when an error
    is met: a job that never opens the tracking store (featurize) does not import MLflow for its error class, and
    none of its errors can then be a TrackingError."""
    from voiceclf import corpus, parallel, pipeline, report_files, shards
    from voiceclf.config import ConfigError, DataError, DeviceError

    table = [
        ((safeio.LockedError,), LOCKED),
        ((corpus.CorpusError, shards.ShardError, ConfigError, DataError, DeviceError, parallel.EngineError, safeio.UnsafeOutputError,
          pipeline.OutputError, pipeline.GridError), USAGE),
        ((pipeline.ModelError, pipeline.TrainError, report_files.ReportNotWritten), FAILURE),
    ]
    if (tracking := sys.modules.get("voiceclf.tracking")) is not None:
        table.append(((tracking.TrackingError,), FAILURE))
    return table


def job_error(e: Exception) -> JobError | None:
    """A library error as the job's last line and exit code (:func:`_error_table`), or None for what is not one (a bug)."""
    for types, code in _error_table():
        if isinstance(e, types):
            if code == LOCKED:
                return JobError(f"{e}; rerun with --wait to queue behind it", LOCKED)
            if getattr(e, "outside_paths", False):  # a manifest's paths outside its folder (corpus.CorpusError)
                return JobError(f"{e} (--allow-outside-paths accepts them)", code)
            return JobError.of(e, code)
    return None


#: errno values of a full disk or quota (EFBIG: a file-size limit): the output's folder cannot take the write.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def store_failure(e: BaseException) -> str | None:
    """One line for an error of the tracking store's database that reached the job raw (locked, damaged, full), else None."""
    if "mlflow" not in sys.modules:  # no store was opened
        return None
    from voiceclf.tracking import store_error

    found = store_error(e)
    return None if found is None else str(found)


class Reporter:
    """A rich progress bar on a terminal; timestamped log lines every ``every`` items otherwise (cron, Airflow)."""

    note_every_s = 10.0  # without a terminal, a new note alone is logged at most this often (seconds)

    def __init__(self, description: str, total: int, unit: str = "files", every: int | None = None) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.every = every or max(1, min(500, total // 10 or 1))
        self.done = self.errors = 0
        self.start = time.perf_counter()
        self._note, self._said = "", float("-inf")  # the last note logged, and when
        self._bar = None
        if interactive():
            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("[red]{task.fields[errors]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
            )

    def __enter__(self) -> "Reporter":
        log.info("%s: %d %s to do", self.description, self.total, self.unit)
        if self._bar:
            self._bar.start()
            self._task = self._bar.add_task(escape(self.description), total=self.total, rate="", errors="")
        return self

    def advance(self, n: int = 1, errors: int = 0, note: str = "") -> None:
        check_interrupted()  # every job loop reports progress, so this is where a lost SIGTERM surfaces
        before = self.done
        self.done += n
        self.errors += errors
        if self._bar:
            self._bar.update(
                self._task, completed=self.done, rate=f"{self.rate:.1f} {self.unit}/s",
                errors=f"{self.errors} errors" if self.errors else "", description=escape(f"{self.description} {note}".strip()),
            )
        elif (self.done // self.every != before // self.every or self.done == self.total
              or (note and note != self._note and time.perf_counter() - self._said >= self.note_every_s)):
            # a note alone (a training's epoch) is a line too, at most one per note_every_s: cron logs show a long stage moving
            log.info("%s: %d/%d %s, %d errors, %.1f %s/s %s", self.description, self.done, self.total, self.unit, self.errors, self.rate, self.unit, note)
            self._note, self._said = note, time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.done / max(self.seconds, 1e-9)

    def __exit__(self, *exc) -> None:
        if self._bar:
            self._bar.stop()


@contextlib.contextmanager
def progress_bars():
    """The ``on_progress`` callback a job hands to a pipeline function: one :class:`Reporter` per stage."""
    open_: list[Reporter] = []
    lock = threading.Lock()  # a stage's notes may come from a thread of the library (train's epoch relay)

    def on_progress(p) -> None:
        with lock:
            if not open_ or open_[-1].description != p.stage:
                close()
                open_.append(Reporter(p.stage, p.total, unit=p.unit).__enter__())
            rep = open_[-1]
            rep.advance(p.done - rep.done, errors=p.errors - rep.errors, note=p.note)

    def close() -> None:
        while open_:
            open_.pop().__exit__(None, None, None)

    try:
        yield on_progress
    finally:
        close()


def summary_table(title: str, rows: dict) -> None:
    """The end-of-job summary: a small table on a terminal, one log line otherwise."""
    if interactive():
        from rich.table import Table

        t = Table(title=escape(title), show_header=False)
        for k, v in rows.items():  # values hold paths: a folder named "in[/]box" is text, not markup
            t.add_row(escape(k), escape(str(v)))
        console.print(t)
    else:
        log.info("%s: %s", title, ", ".join(f"{k}={v}" for k, v in rows.items()))
