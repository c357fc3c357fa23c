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
        return bool(self.rows_lost or self.events_lost or self.snapshots_lost)

    def loss_summary(self) -> str:
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


__all__ = ["WriteStatus", "finish_unclosed"]
