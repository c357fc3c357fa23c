"""Everything the recorder puts on disk goes through one `RunSink`: step rows, events, snapshots.

- Rows and events whose write fails with an `OSError` stay in memory (at most `max_pending_rows` rows,
  `max_pending_events` events; beyond, the oldest are dropped and counted) and are retried at the next
  flush and at close. Step chunks and events are written before queued snapshots (writer priorities).
- A run directory deleted, replaced, or stripped of `run.json` stops all writing (nothing recreated).
- Nothing raises into training: trouble goes to `take_problems()` (the recorder warns) and `status`.
- `finish()` (from `Recorder.close()` or the finalizer; the sink holds no reference to the recorder)
  writes what is buffered, retries what failed, removes stale temp files.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from dataclasses import replace
from pathlib import Path

from forensics.record.guard import RunDirGuard
from forensics.record.sink_jobs import WriterJobs
from forensics.record.status import WriteStatus
from forensics.record.writer import FIRST, LATER, BackgroundWriter
from forensics.rundir.atomic import clean_stale_temps
from forensics.rundir.events import EventLog
from forensics.rundir.format import STEP_COLUMNS

log = logging.getLogger("forensics.record")
MAX_PENDING_ROWS = 65_536  # ~25 MB of Python floats: 256 default chunks
MAX_PENDING_EVENTS = 10_000


def _empty_rows() -> dict:
    return {c: [] for c in STEP_COLUMNS}


class RunSink(WriterJobs):
    """The disk side of one run (see the module docstring). Training-thread methods: `add_row`,
    `patch_last`, `submit_rows`, `event`, `snapshot`, `flush`, `take_problems`, `finish`."""

    def __init__(self, run_dir: Path | str, *, steps_chunk: int, max_pending_rows: int = MAX_PENDING_ROWS,
                 max_pending_events: int = MAX_PENDING_EVENTS, first_chunk: int = 0):
        self.run_dir, self.pid = Path(run_dir), os.getpid()  # a forked child must not write this run
        self.steps_chunk = steps_chunk
        self.max_pending_rows, self.max_pending_events = max_pending_rows, max_pending_events
        self._guard = RunDirGuard(self.run_dir)
        self._log = EventLog(self.run_dir)
        self._lock = threading.Lock()
        self._st = WriteStatus()
        self._rows = _empty_rows()
        self.open_row: dict | None = None  # the row of a step still waiting for its loss
        self.queued: list = []  # steps waiting for their device scalars (the recorder's queue, shared)
        self.deferred = None  # their `forensics.record.lazy.Deferred`, set by the recorder
        self._chunks: dict[int, dict] = {}  # chunk index -> rows not on disk yet
        self._next_chunk, self._writing = first_chunk, None  # the next chunk's index, the one being written
        self._events: deque = deque()
        self._problems: list[tuple[str, str]] = []
        self._finished = False
        self._writer = BackgroundWriter(
            on_error=lambda e, name: self._report("crash", f"{name} crashed ({e!r})"))

    # ----------------------------------------------------------------- training thread

    @property
    def finished(self) -> bool:
        """Whether `finish` has run: rows given after that are counted lost, not written."""
        return self._finished

    @property
    def stopped(self) -> bool:
        """Whether writing stopped for good (the run directory went away); training goes on."""
        return self._st.stopped is not None

    @property
    def status(self) -> WriteStatus:
        """A snapshot of the write counters, with the rows and events still waiting for the disk."""
        with self._lock:
            return replace(self._st, rows_pending=sum(len(r["step"]) for r in self._chunks.values()),
                           events_pending=len(self._events))

    def add_row(self, row: dict) -> None:
        """Buffer one step's row (every column of STEP_COLUMNS); a full buffer becomes a chunk first."""
        if self.open_row is not None and self.open_row["step"] == row["step"]:
            self.open_row = None
        if self._finished or self.stopped:
            with self._lock:
                self._st.rows_lost += 1
            return
        if len(self._rows["step"]) >= self.steps_chunk:
            self.submit_rows()
        for c in STEP_COLUMNS:
            self._rows[c].append(row[c])

    def patch_last(self, step: int, column: str, value) -> None:
        """Set `column` of the buffered row of `step`, if that row is the last one buffered."""
        if self._rows["step"] and self._rows["step"][-1] == step:
            self._rows[column][-1] = value

    def last_step(self) -> int | None:
        """The step of the last buffered (not yet submitted) row, or None when the buffer is empty."""
        return self._rows["step"][-1] if self._rows["step"] else None

    def submit_rows(self) -> None:
        """Hand the buffered rows to the writer as the next chunk (and retry the chunks that failed)."""
        if self._rows["step"]:
            rows, self._rows = self._rows, _empty_rows()
            with self._lock:
                self._chunks[self._next_chunk] = rows
                self._next_chunk += 1
                dropped = self._bound_chunks()
            if dropped:
                self._report("overflow", f"more than {self.max_pending_rows} step rows wait for the disk: "
                             f"the oldest {dropped} were dropped")
        self._submit("steps chunks", self._write_chunks, FIRST)

    def submit_file(self, name: str, write) -> None:
        """Queue `write()` (a small file such as detector.json) behind the queued rows; errors reported."""
        self._submit(name, lambda: self._write_file(name, write), FIRST)

    def event(self, ev: dict) -> None:
        """Queue an event (`{"type": ..., **fields}`) for events.jsonl, in order."""
        if self._finished or self.stopped:
            with self._lock:
                self._st.events_lost += 1
            return
        with self._lock:
            self._events.append(ev)
            dropped = max(0, len(self._events) - self.max_pending_events)
            for _ in range(dropped):
                self._events.popleft()
            self._st.events_lost += dropped
        if dropped:
            self._report("overflow-events", f"more than {self.max_pending_events} events wait for the disk: "
                         "the oldest were dropped")
        self._submit("events", self._write_events, FIRST)

    def snapshot(self, step: int, role: str, spike_id, export: dict, meta: dict) -> None:
        """Queue a snapshot file (an exported ring slot) and its `snapshot` event."""
        if self._finished or self.stopped:
            with self._lock:
                self._st.snapshots_lost += 1
            return
        self._submit(f"snapshot of step {step}",
                     lambda: self._write_snapshot(step, role, spike_id, export, meta), LATER)

    def flush(self) -> None:
        """Write buffered rows as a (partial) chunk, retry what failed, wait for everything queued."""
        if self._finished:
            return
        self.submit_rows()
        self._submit("events", self._write_events, FIRST)
        self._writer.drain()

    def take_problems(self) -> list[tuple[str, str]]:
        """(kind, message) of the trouble met since the last call: chunk, event, snapshot, overflow,
        overflow-events, dropped, stopped, crash."""
        with self._lock:
            out, self._problems = self._problems, []
        return out

    def finish(self) -> WriteStatus:
        """Write what is buffered (including a step still waiting for its loss), retry what failed,
        stop the writer, count what is still unwritten as lost, remove stale temp files (idempotent)."""
        if self._finished:
            return self.status
        self._rescue_queued()
        if self.open_row is not None:
            self.add_row(self.open_row)
        on_writer = threading.current_thread() is self._writer.thread
        self.submit_rows()
        self._submit("events", self._write_events, FIRST)
        self._finished = True
        if on_writer:  # a garbage collection on the writer thread ran the finalizer: no queue to wait for
            self._write_chunks()
            self._write_events()
        self._writer.close()
        with self._lock:
            self._drop_pending()
        if not self.stopped:
            clean_stale_temps(self.run_dir, own=True)
        return self.status

    def _rescue_queued(self) -> None:
        """Unclosed recorder: fetch the queued steps' scalars and buffer their rows (not detected: spike_id
        null), so a run that never called close() loses at most what a fetch cannot give."""
        try:
            if self.deferred is not None:
                self.deferred.fetch()
            for step in self.queued:
                row = step.row
                row.pop("_reported", None)
                prev = row.pop("_prev_update", None)
                if prev is not None:
                    self.patch_last(step.t - 1, "update_norm", prev)
                self.add_row(row)
        except Exception as e:  # noqa: BLE001 - never raise at exit
            self._report("dropped", f"steps waiting for their scalars could not be written ({e!r})", e)
        self.queued.clear()

    # ----------------------------------------------------------------- writer thread

    def _submit(self, name: str, job, priority: int) -> None:
        try:
            self._writer.submit(name, job, priority=priority)
        except RuntimeError:  # closed: finish() has run; what is pending is counted there
            pass

    def _drop_pending(self) -> None:
        """Count what still waits for the disk as lost (under the lock)."""
        self._st.rows_lost += sum(len(r["step"]) for r in self._chunks.values())
        self._st.events_lost += len(self._events)
        self._chunks.clear()
        self._events.clear()

    def _bound_chunks(self) -> int:
        dropped = 0
        while sum(len(r["step"]) for r in self._chunks.values()) > self.max_pending_rows:
            oldest = min((i for i in self._chunks if i != self._writing), default=None)
            if oldest is None:
                break
            n = len(self._chunks.pop(oldest)["step"])
            self._st.rows_lost += n
            dropped += n
        return dropped

    def _dir_ok(self) -> bool:
        if self.stopped:
            return False
        problem = self._guard.problem()
        if problem is None:
            return True
        with self._lock:
            self._st.stopped = problem
            self._drop_pending()
        self._report("stopped", f"{problem}: recording stopped (nothing more is written there), "
                     "training continues")
        return False

    def _report(self, kind: str, message: str, error: BaseException | None = None) -> None:
        log.error("spike forensics: %s", message)
        with self._lock:
            self._problems.append((kind, message))
            if error is not None:
                self._st.failed_writes += 1
                self._st.last_error = f"{type(error).__name__}: {error}"


__all__ = ["MAX_PENDING_EVENTS", "MAX_PENDING_ROWS", "RunSink", "WriteStatus"]
