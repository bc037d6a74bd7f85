"""Progress of trainings while they run: each epoch's end, from whichever process trains, as a line in the parent.

A training of the CNN takes minutes on a CPU and runs in a worker process; without this, a job under
cron printed nothing until a training ended (8 minutes). Workers put one note per epoch on a queue
(``multiprocessing.Manager``'s, which loky and threading workers can reach; a Dask worker on another
machine cannot, and gets none); a thread of the parent hands each note to ``report`` and, when
``every_s`` pass without one, says what it last heard and how long ago, so a log never goes quiet
for longer than that.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Callable, Iterator

log = logging.getLogger(__name__)


def epoch_note(name: str, left_out: str | None, epoch: int, epochs: int, row: dict) -> str:
    """What one epoch's end says: which training, which epoch of how many, its loss and validation score."""
    without = f" without {left_out}" if left_out else ""
    return f"{name}{without} epoch {epoch}/{epochs} loss {row['train_loss']:.3f} val_score {row['val_score']:.3f}"


def put_quietly(sink, note: str) -> None:
    """A worker's :meth:`put`: progress is never worth failing a training for (the parent may be gone)."""
    try:
        sink.put(note)
    except (OSError, EOFError, ConnectionError) as e:
        log.debug("progress note dropped: %s", e)


@contextlib.contextmanager
def epochs_reported(report: Callable[[str], None], across_processes: bool, every_s: float = 30.0) -> Iterator:
    """A queue for epoch notes (:func:`epoch_note`), reported from a thread of this process while the block runs.

    Parameters
    ----------
    report : callable
        Called with each note, and with a "still training" note after ``every_s`` seconds without one.
    across_processes : bool
        Worker processes of this machine put the notes (a Manager queue, picklable); else threads of this one.
    every_s : float
        Longest quiet time, in seconds, before the latest note is repeated with its age.
    """
    with contextlib.ExitStack() as stack:
        if across_processes:
            import multiprocessing

            notes = stack.enter_context(multiprocessing.Manager()).Queue()
        else:
            notes = queue.Queue()
        stop = threading.Event()
        start = time.monotonic()

        def relay() -> None:
            last, last_at, said_at = None, start, start
            while not stop.is_set():
                try:
                    note = notes.get(timeout=min(1.0, every_s))
                except queue.Empty:
                    if time.monotonic() - said_at >= every_s:
                        ago = time.monotonic() - last_at
                        note = (f"still training; last: {last} ({ago:.0f} s ago)" if last else
                                f"still training; no epoch finished yet ({ago:.0f} s)")
                        said_at = time.monotonic()
                        report(note)
                    continue
                except (OSError, EOFError, ConnectionError):
                    return  # the manager is gone: the job is ending
                last, last_at = note, time.monotonic()
                said_at = last_at
                report(note)

        def guarded() -> None:
            try:
                relay()
            except BaseException as e:  # an interrupt raised in this thread is the main thread's to act on
                log.debug("progress relay stopped: %r", e)

        thread = threading.Thread(target=guarded, name="voiceclf-epochs", daemon=True)
        thread.start()
        try:
            yield notes
        finally:
            stop.set()
            thread.join(timeout=5)
