"""Background writer: a thread that runs file-writing jobs in order, off the training thread."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

log = logging.getLogger("forensics.record")


class BackgroundWriter:
    """Runs submitted jobs (callables) in submission order on one daemon thread.

    A job that raises does not stop the thread: the error goes to `on_error(exc, job_name)`,
    which the recorder uses to disable capture and warn from the training thread.
    """

    def __init__(self, *, on_error: Callable[[BaseException, str], None], name: str = "forensics-writer"):
        self._queue: queue.Queue = queue.Queue()
        self._on_error = on_error
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, name: str, job: Callable[[], None]) -> None:
        """Queue `job`; `name` identifies it in error messages."""
        if self._closed:
            raise RuntimeError("writer is closed")
        self._queue.put((name, job))

    def drain(self) -> None:
        """Block until every job submitted so far has run."""
        self._queue.join()

    def close(self) -> None:
        """Run what is queued, then stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                name, job = item
                try:
                    job()
                except BaseException as e:  # noqa: BLE001 - the training must never see it
                    log.exception("spike forensics: writing %s failed", name)
                    try:
                        self._on_error(e, name)
                    except Exception:  # noqa: BLE001
                        log.exception("spike forensics: error handler failed")
            finally:
                self._queue.task_done()
