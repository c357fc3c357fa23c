"""`events.jsonl`: an append-only log of spikes, snapshots and warnings; torn last line tolerated."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from forensics.rundir.format import EVENTS_FILE, CorruptFileError


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no NaN/Inf; "nan"/"inf" strings as in snapshot metadata
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventLog:
    """Appends one JSON object per line to `events.jsonl`, flushed and fsynced per event."""

    def __init__(self, run_dir: Path | str, *, fsync: bool = True):
        self.path = Path(run_dir) / EVENTS_FILE
        self._fsync = fsync
        self._repair_torn_tail()

    def _repair_torn_tail(self) -> None:
        # A killed writer may have left a partial last line: drop it (or end a complete one).
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        raw = self.path.read_bytes()
        if raw.endswith(b"\n"):
            return
        cut = raw.rfind(b"\n") + 1
        try:
            json.loads(raw[cut:])
            complete = True
        except (ValueError, UnicodeDecodeError):
            complete = False
        with open(self.path, "r+b") as f:
            if complete:
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
            else:
                f.truncate(cut)

    def append(self, type_: str, **fields) -> dict:
        """Append an event `{"type": type_, **fields}` and return it."""
        event = {"type": type_, **_clean(fields)}
        line = (json.dumps(event, allow_nan=False) + "\n").encode()
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
        return event


def read_events(run_dir: Path | str) -> list[dict]:
    """All events in order; a torn or unparseable *last* line is ignored, earlier ones raise."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    events = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        last = all(not rest.strip() for rest in lines[i + 1:])
        try:
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as e:
            if last:
                break
            raise CorruptFileError(path, f"line {i + 1} is not a JSON object ({e})") from None
        events.append(event)
    return events
