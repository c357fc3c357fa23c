"""What the recorder's writes came to: `WriteStatus` (also `Recorder.status`), and the flush of a
recorder nobody closed."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

from forensics.record.warn import RecorderWarning

log = logging.getLogger("forensics.record")


@dataclass
class WriteStatus:
    """What reached the disk, what waits in memory for a retry, and what is lost for good."""

    rows_written: int = 0
    rows_pending: int = 0  # in chunks not on disk yet (failed or queued); bounded by max_pending_rows
    rows_lost: int = 0
    events_written: int = 0
    events_pending: int = 0
    events_lost: int = 0
    snapshots_written: int = 0
    snapshots_lost: int = 0
    failed_writes: int = 0  # write attempts that raised
    last_error: str | None = None
    stopped: str | None = None  # why writing stopped for good (the run directory went away)

    @property
    def lost(self) -> bool:
        """Whether any row, event or snapshot could not be written."""
        return bool(self.rows_lost or self.events_lost or self.snapshots_lost)

    def loss_summary(self) -> str:
        """One line for the user: what was lost, by count, and the last error."""
        parts = [f"{n} {what}" for n, what in ((self.rows_lost, "step rows"), (self.events_lost, "events"),
                                               (self.snapshots_lost, "snapshots")) if n]
        return ", ".join(parts) + f" could not be written (last error: {self.last_error})"


def finish_unclosed(sink) -> None:
    """`weakref.finalize` callback of a Recorder: garbage-collected, or the interpreter exits, without
    `close()`. Flushes the sink; warns if something could not be written. Never raises."""
    if sink.pid != os.getpid():  # a forked child (e.g. a DataLoader worker) exiting: the parent owns the run
        return
    try:
        st = sink.finish()
        if st.lost:
            message = f"spike forensics: run {sink.run_dir} was not closed; at exit {st.loss_summary()}"
            log.warning(message)
            warnings.warn(message, RecorderWarning, stacklevel=2)
    except Exception:
        log.exception("spike forensics: flushing an unclosed recorder failed")


__all__ = ["FailurePolicy", "WriteStatus", "finish_unclosed"]


class FailurePolicy:
    """The recorder's failure handling (a mixin over `strict`, `_sink`, `_snaps`, `_warn`, `_step`):
    errors are logged and warned about once and end snapshot capture, never raised into training
    unless strict."""


    def _log_warning(self, message: str) -> None:
        if not self._sink.finished:
            self._sink.event({"type": "warning", "step": self._step, "message": message})

    def _fail(self, where: str, e: BaseException) -> None:
        if self.strict:
            raise e
        log.error("spike forensics: error in %s; capture disabled", where, exc_info=e)
        self._snaps.disable()
        self._warn(f"error:{where}", f"recorder error in {where} ({type(e).__name__}: {e}); snapshot capture "
                   "disabled, training continues")

    def _surface(self) -> None:
        """Warn about (or, strict, raise) the writer's trouble, on the training thread."""
        for kind, message in self._sink.take_problems():
            if self.strict:
                raise RuntimeError(f"spike forensics: {message}")
            if kind in ("snapshot", "stopped", "crash"):
                self._snaps.disable()
            self._warn(kind, message if kind == "stopped" or kind not in ("snapshot", "crash")
                       else message + "; snapshot capture disabled, training continues")
