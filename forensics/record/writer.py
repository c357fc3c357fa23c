"""Background writer: one thread that runs file-writing jobs off the training thread, urgent ones first.

Jobs carry a priority: `FIRST` (step-row chunks and events: small, and the part of the record
a user reads first) runs before `LATER` (snapshot files: large and slow); within a priority,
jobs run in submission order. `concurrent.futures.ThreadPoolExecutor` has no priorities and
refuses new work once the interpreter starts shutting down (before `atexit` handlers run), when
the recorder's exit flush still needs to write, so this is a thread over a `queue.PriorityQueue`.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("forensics.record")

FIRST, LATER = 0, 1
_STOP = 9  # after everything queued


class BackgroundWriter:
    """Runs submitted jobs (callables) on one daemon thread, `FIRST` before `LATER`, FIFO within each.

    A job that raises does not stop the thread: the error goes to `on_error(exc, job_name)`.
    Jobs must not raise for expected trouble (the recorder's jobs handle their own `OSError`s).
    """

    def __init__(self, *, on_error: Callable[[BaseException, str], None], name: str = "forensics-writer"):
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._on_error = on_error
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, name: str, job: Callable[[], None], *, priority: int = LATER) -> None:
        """Queue `job`; `name` identifies it in error messages. RuntimeError once closed."""
        if self._closed:
            raise RuntimeError("writer is closed")
        self._queue.put((priority, next(self._seq), name, job))

    def drain(self) -> None:
        """Block until every job submitted so far has run."""
        if self._thread.is_alive():
            self._queue.join()

    def close(self) -> None:
        """Run what is queued, then stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put((_STOP, next(self._seq), None, None))
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    @property
    def thread(self) -> threading.Thread:
        """The background thread that runs the write jobs (for joins and tests)."""
        return self._thread

    @property
    def closed(self) -> bool:
        """Whether `close` has been called: `submit` then raises RuntimeError."""
        return self._closed

    @property
    def pending(self) -> int:
        """Jobs queued and not yet started (approximate: the queue's qsize)."""
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            _, _, name, job = self._queue.get()
            try:
                if job is None:
                    return
                try:
                    job()
                except BaseException as e:  # the training must never see it
                    log.exception("spike forensics: writing %s failed", name)
                    try:
                        self._on_error(e, name)
                    except Exception:
                        log.exception("spike forensics: error handler failed")
            finally:
                self._queue.task_done()
