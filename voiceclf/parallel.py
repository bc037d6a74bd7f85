"""The joblib backend: local worker processes (loky) or the workers of a Dask cluster.

Jobs call :func:`imap` inside :func:`engine`; switching to a cluster changes nothing else.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import gc
import importlib
import importlib.util
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator

import joblib

BACKENDS = ("loky", "threading", "dask")
#: What a featurize worker imports as it starts (:func:`start_worker`), by model family. No worker imports torch:
#: the speaker encoder runs in numpy (``embedding.py``), which kept its workers under 500 MB.
WORKER_PRELOAD = {"cnn": ("voiceclf.file_windows",), "embedding_head": ("voiceclf.file_windows", "voiceclf.embedding")}


class EngineError(RuntimeError):
    """The parallel engine cannot be started: settings it cannot run (:func:`check`) or an unreachable Dask scheduler."""


def check(jobs: int = -1, backend: str = "loky", scheduler: str | None = None) -> None:
    """Refuse compute settings no engine can run, naming what was expected and what was received (as scikit-learn
    validates an estimator's parameters). Every entry point here calls it; a flow calls it first, before any work.
    A message starts with the parameter's name, so a command line can put its flag's ``--`` in front.

    Parameters
    ----------
    jobs : int
        Worker processes: -1 for one per core, else a count >= 1. (joblib reads -2 as "all cores but one"; the
        flows size their batches and threads from ``jobs`` and do not, so it is refused.)
    backend : str
        One of :data:`BACKENDS`.
    scheduler : str or None
        The Dask scheduler's address, needed by the ``dask`` backend (e.g. ``tcp://host:8786``).

    Raises
    ------
    EngineError
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not (jobs == -1 or jobs >= 1):
        raise EngineError(f"jobs must be -1 (all cores) or >= 1, got {jobs!r}")
    if backend not in BACKENDS:
        raise EngineError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "dask" and not scheduler:
        raise EngineError("backend dask needs a scheduler address (e.g. tcp://host:8786)")


@contextlib.contextmanager
def engine(backend: str = "loky", scheduler: str | None = None, timeout_s: float = 30.0, preload: tuple[str, ...] = ()):
    """Run the enclosed joblib calls on ``backend``; ``dask`` connects to ``scheduler`` first.

    ``preload``: modules a local worker imports as it starts. loky takes a worker's memory after its
    first task as the reference and replaces a worker that grows 300 MB beyond it as leaking: a worker
    that imports torch (speaker embeddings) in a later task than its first, e.g. when one featurize call
    does the CNN's feature set and then the embeddings, would be restarted mid-run. Workers started with
    other ``preload`` are a new pool.
    """
    check(backend=backend, scheduler=scheduler)
    if backend != "threading":
        warm_jit_cache()
    if backend != "dask":
        _join_prestart()
        with joblib.parallel_config(backend=backend, **_local_workers(backend, preload)):
            yield None
        return
    try:
        from distributed import Client
    except ImportError:
        raise EngineError("the dask backend needs the 'dask' extra: pip install 'voiceclf[dask]'") from None
    try:
        client = Client(scheduler, timeout=timeout_s)
    except (OSError, TimeoutError) as e:
        raise EngineError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
    try:
        with joblib.parallel_config(backend="dask"):
            yield client
    finally:
        client.close()


def _local_workers(backend: str, preload: tuple[str, ...]) -> dict:
    """joblib.parallel_config's worker arguments: loky workers idle for minutes after their job dies (even
    SIGKILLed), holding their memory, unless they watch their parent (:func:`start_worker`)."""
    return {"initializer": start_worker, "initargs": (os.getpid(), tuple(preload))} if backend == "loky" else {}


_prestarted: list = []  # prestart()'s warm-up call (one at most), until an engine takes its workers over


def prestart(n_jobs: int = -1, preload: tuple[str, ...] = (), backend: str = "loky") -> None:
    """Start the local worker processes now, without waiting for them, for the next :func:`engine` to use.

    A job's parent first spends about a second importing, listing and hashing on one core while the other
    idles; workers started before that (Python start-up, then ``preload``: ~0.7 s of CPU each) are ready
    when the first batch is sent instead of after it. One no-op task per worker makes loky start them all
    from this thread (a worker that dies with its parent dies with the thread that started it:
    ``PR_SET_PDEATHSIG``); an engine with the same ``preload`` keeps them (loky reuses an executor whose
    arguments are the same), an engine with another preload replaces them. Nothing for other backends or one job.
    """
    check(n_jobs)
    n = joblib.effective_n_jobs(n_jobs)
    if backend != "loky" or _prestarted or n <= 1:
        return
    warm_jit_cache()  # before any worker starts (see below)
    with joblib.parallel_config(backend="loky", **_local_workers(backend, preload)):
        _prestarted.append(joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(joblib.delayed(os.getpid)() for _ in range(n)))
    atexit.unregister(_drop_prestart)  # once, however many jobs this process runs
    atexit.register(_drop_prestart)


def _drop_prestart() -> None:
    """At exit (a job that failed before its engine): end the workers now, without joblib's warning that the
    no-op tasks' results were not used."""
    if _prestarted:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _prestarted.pop().close()


def _join_prestart() -> None:
    """Wait for :func:`prestart`'s no-op tasks: a joblib generator dropped unfinished would terminate its workers.
    A worker that failed to start is the engine's to report: its own call starts workers again."""
    if _prestarted:
        try:
            collections.deque(_prestarted.pop(), maxlen=0)
        except Exception:
            pass


# librosa compiles its numba gufuncs (cache=True) when these modules are first imported. Worker processes
# that do so at once on an empty cache can leave a mismatched pair of cache files, and every later process
# that loads the pair dies of SIGSEGV (numba/numba#10128, librosa/librosa#1998; seen in our CI). The cure
# upstream gives: compile once, in one process, before any worker starts. A Dask cluster on other hosts
# has caches of its own that this cannot reach.
_JIT_MODULES = ("librosa.util.utils", "librosa.core.audio", "librosa.core.pitch")


def _jit_cache_is_warm() -> bool:
    """Whether numba's cache index of every gufunc module sits beside it (found without importing librosa)."""
    if os.environ.get("NUMBA_CACHE_DIR") or os.environ.get("NUMBA_DISABLE_JIT"):
        return False  # a cache elsewhere: assume cold, warming is only slower
    spec = importlib.util.find_spec("librosa")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = Path(spec.submodule_search_locations[0])
    for name in _JIT_MODULES:
        module = root.joinpath(*name.split(".")[1:]).with_suffix(".py")
        if not any((module.parent / "__pycache__").glob(f"{module.stem}.*.nbi")):
            return False
    return True


def warm_jit_cache() -> None:
    """Compile librosa's cached gufuncs in this process unless their cache exists (a no-op then)."""
    if not _jit_cache_is_warm():
        for name in _JIT_MODULES:
            importlib.import_module(name)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def start_worker(parent_pid: int, preload: tuple[str, ...] = ()) -> None:
    """Worker initializer: die with the parent, then import ``preload``.

    What is imported by then lives as long as the worker: frozen out of the cyclic garbage collector
    (gc.freeze), it is not traversed again by every collection, nor once more when the worker exits,
    which took ~1 s for a worker holding torch, waited for by the job at its end.
    """
    exit_with_parent(parent_pid)
    for name in preload:
        importlib.import_module(name)
    gc.freeze()


def exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this worker when the process that started it dies, however it dies.

    On Linux the kernel sends SIGKILL (prctl PR_SET_PDEATHSIG); elsewhere a thread watches the
    parent pid. A parent that died before this ran is caught by the pid check.
    """
    try:
        armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no prctl: not Linux
        armed = False
    if not armed:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)


def imap(fn: Callable, tasks: Iterable, n_jobs: int = -1, **kwargs) -> Iterator:
    """``fn(task, **kwargs)`` for every task, results yielded in task order as they complete.

    A generator: the whole list of results is never built. joblib dispatches the next task as each
    one completes, whether or not its result was taken yet: the parent holds what its loop has not
    consumed, a few results when the loop keeps up (featurize's shard writes, score's model once loaded).
    """
    check(n_jobs)
    par = joblib.Parallel(n_jobs=n_jobs, return_as="generator", pre_dispatch="2*n_jobs")
    return par(joblib.delayed(fn)(t, **kwargs) for t in tasks)
