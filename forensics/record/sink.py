"""Everything the recorder puts on disk goes through one `RunSink`: step rows, events, snapshots.

- Rows and events whose write fails with an `OSError` (read-only file system, disk full) stay in
  memory (at most `max_pending_rows` rows, `max_pending_events` events; beyond, the oldest are
  dropped and counted) and are retried at the next flush (every `steps_chunk` steps, `flush()`)
  and at close. Step chunks and events are written before queued snapshots (writer priorities).
- A run directory deleted, replaced, or stripped of `run.json` stops all writing (nothing recreated).
- Nothing raises into training: trouble goes to `take_problems()` (the recorder warns) and `status`.
- `finish()` (from `Recorder.close()`, or the finalizer when the recorder is garbage-collected or
  the interpreter exits) writes what is buffered, retries what failed, removes stale temp files.
  The sink holds no reference to the recorder, so the finalizer does not keep the recorder alive.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from dataclasses import replace
from pathlib import Path

from forensics.record.guard import RunDirGuard
from forensics.record.ring import tensors_from_export
from forensics.record.status import WriteStatus
from forensics.record.writer import FIRST, LATER, BackgroundWriter
from forensics.rundir import snapshots as snapshot_files
from forensics.rundir.atomic import clean_stale_temps
from forensics.rundir import steps as step_files
from forensics.rundir.events import EventLog
from forensics.rundir.format import SNAPSHOTS_DIR, STEP_COLUMNS, snapshot_name

log = logging.getLogger("forensics.record")
MAX_PENDING_ROWS = 65_536  # ~25 MB of Python floats: 256 default chunks
MAX_PENDING_EVENTS = 10_000


def _empty_rows() -> dict:
    return {c: [] for c in STEP_COLUMNS}


class RunSink:
    """The disk side of one run (see the module docstring). Training-thread methods: `add_row`,
    `patch_last`, `submit_rows`, `event`, `snapshot`, `flush`, `take_problems`, `finish`."""

    def __init__(self, run_dir: Path | str, *, steps_chunk: int, max_pending_rows: int = MAX_PENDING_ROWS,
                 max_pending_events: int = MAX_PENDING_EVENTS, first_chunk: int = 0):
        self.run_dir, self.pid = Path(run_dir), os.getpid()  # a forked child must not write this run
        self.steps_chunk, self.max_pending_rows, self.max_pending_events = steps_chunk, max_pending_rows, max_pending_events
        self._guard = RunDirGuard(self.run_dir)
        self._log = EventLog(self.run_dir)
        self._lock = threading.Lock()
        self._st = WriteStatus()
        self._rows = _empty_rows()
        self.open_row: dict | None = None  # the row of a step still waiting for its loss
        self._chunks: dict[int, dict] = {}  # chunk index -> rows not on disk yet
        self._next_chunk, self._writing = first_chunk, None  # the next chunk's index, the one being written
        self._events: deque = deque()
        self._problems: list[tuple[str, str]] = []
        self._finished = False
        self._writer = BackgroundWriter(on_error=lambda e, name: self._report("crash", f"{name} crashed ({e!r})"))

    # ----------------------------------------------------------------- training thread

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def stopped(self) -> bool:
        return self._st.stopped is not None

    @property
    def status(self) -> WriteStatus:
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
                self._report("overflow", f"more than {self.max_pending_rows} step rows wait for the disk: the "
                             f"oldest {dropped} were dropped")
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
        self._submit(f"snapshot of step {step}", lambda: self._write_snapshot(step, role, spike_id, export, meta),
                     LATER)

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
            self._st.rows_lost += sum(len(r["step"]) for r in self._chunks.values())
            self._st.events_lost += len(self._events)
            self._chunks.clear()
            self._events.clear()
        if not self.stopped:
            clean_stale_temps(self.run_dir, own=True)
        return self.status

    # ----------------------------------------------------------------- writer thread

    def _submit(self, name: str, job, priority: int) -> None:
        try:
            self._writer.submit(name, job, priority=priority)
        except RuntimeError:  # closed: finish() has run; what is pending is counted there
            pass

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
            self._st.rows_lost += sum(len(r["step"]) for r in self._chunks.values())
            self._st.events_lost += len(self._events)
            self._chunks.clear()
            self._events.clear()
        self._report("stopped", f"{problem}: recording stopped (nothing more is written there), training continues")
        return False

    def _write_chunks(self) -> None:
        if not self._dir_ok():
            return
        with self._lock:
            todo = sorted(self._chunks)
        reported = False
        for index in todo:
            with self._lock:
                rows = self._chunks.get(index)
                self._writing = index
            if rows is None:
                continue
            try:
                step_files.write_chunk(self.run_dir, index, rows)
                written = True
            except OSError as e:
                written = False
                if not reported:
                    reported = True
                    self._report("chunk", f"writing steps chunk {index} failed ({type(e).__name__}: {e}); its rows "
                                 f"stay in memory (at most {self.max_pending_rows} rows) and are retried at the next "
                                 "flush and at close", e)
            except Exception as e:  # noqa: BLE001 - not the disk: a retry cannot help
                written = None
                self._report("dropped", f"steps chunk {index} cannot be written ({type(e).__name__}: {e}); "
                             "its rows are lost", e)
            with self._lock:
                self._writing = None
                if written is not False:
                    n = len(self._chunks.pop(index, rows)["step"])
                    if written:
                        self._st.rows_written += n
                    else:
                        self._st.rows_lost += n

    def _write_file(self, name: str, write) -> None:
        try:
            if self._dir_ok():
                write()
        except Exception as e:  # noqa: BLE001 - rewritten later (with the next chunk, at close)
            self._report("file", f"writing {name} failed ({type(e).__name__}: {e}); retried later", e)

    def _write_events(self) -> None:
        if not self._dir_ok():
            return
        while True:
            with self._lock:
                if not self._events:
                    return
                ev = self._events[0]
            try:
                self._log.append(ev["type"], **{k: v for k, v in ev.items() if k != "type"})
                ok = True
            except OSError as e:
                self._report("event", f"writing event {ev['type']!r} failed ({type(e).__name__}: {e}); events stay "
                             f"in memory (at most {self.max_pending_events}) and are retried", e)
                return
            except Exception as e:  # noqa: BLE001 - an event that cannot be encoded: drop it, keep the rest
                ok = False
                self._report("dropped", f"event {ev.get('type')!r} cannot be written ({type(e).__name__}: {e})", e)
            with self._lock:
                if self._events and self._events[0] is ev:
                    self._events.popleft()
                    if ok:
                        self._st.events_written += 1
                    else:
                        self._st.events_lost += 1

    def _write_snapshot(self, step, role, spike_id, export, meta) -> None:
        if not self._dir_ok():
            with self._lock:
                self._st.snapshots_lost += 1
            return
        rel = f"{SNAPSHOTS_DIR}/{snapshot_name(step)}"
        try:
            nbytes = snapshot_files.save_snapshot(self.run_dir / rel, tensors_from_export(export), meta)
        except Exception as e:  # noqa: BLE001 - snapshots are too large to keep for a retry
            with self._lock:
                self._st.snapshots_lost += 1
            self._report("snapshot", f"writing the snapshot of step {step} failed ({type(e).__name__}: {e})", e)
            return
        with self._lock:
            self._st.snapshots_written += 1
            self._events.append({"type": "snapshot", "step": step, "role": role, "spike_id": spike_id,
                                 "file": rel, "bytes": nbytes})
        self._write_events()

    def _report(self, kind: str, message: str, error: BaseException | None = None) -> None:
        log.error("spike forensics: %s", message)
        with self._lock:
            self._problems.append((kind, message))
            if error is not None:
                self._st.failed_writes += 1
                self._st.last_error = f"{type(error).__name__}: {error}"


__all__ = ["MAX_PENDING_EVENTS", "MAX_PENDING_ROWS", "RunSink", "WriteStatus"]
