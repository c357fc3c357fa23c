"""The writer-thread jobs of `RunSink` (forensics.record.sink): steps chunks, events, snapshot files
and small files such as detector.json, each written atomically; failures reported, never raised."""

from __future__ import annotations

from forensics.record.ring import tensors_from_export
from forensics.rundir import snapshots as snapshot_files
from forensics.rundir import steps as step_files
from forensics.rundir.format import SNAPSHOTS_DIR, snapshot_name


class WriterJobs:
    """Mixin of `RunSink`: uses its run_dir, _lock, _st, _chunks, _events, _writing, _log,
    max_pending_rows, max_pending_events, _dir_ok and _report."""

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
                    self._report("chunk", f"writing steps chunk {index} failed ({type(e).__name__}: {e}); "
                                 f"its rows stay in memory (at most {self.max_pending_rows} rows) and are "
                                 "retried at the next flush and at close", e)
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
                self._report("event", f"writing event {ev['type']!r} failed ({type(e).__name__}: {e}); "
                             f"events stay in memory (at most {self.max_pending_events}) and are retried", e)
                return
            except Exception as e:  # noqa: BLE001 - an event that cannot be encoded: drop it, keep the rest
                ok = False
                self._report("dropped",
                             f"event {ev.get('type')!r} cannot be written ({type(e).__name__}: {e})", e)
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
            self._report("snapshot",
                         f"writing the snapshot of step {step} failed ({type(e).__name__}: {e})", e)
            return
        with self._lock:
            self._st.snapshots_written += 1
            self._events.append({"type": "snapshot", "step": step, "role": role, "spike_id": spike_id,
                                 "file": rel, "bytes": nbytes})
        self._write_events()


__all__ = ["WriterJobs"]
