"""`events.jsonl`: an append-only log of spikes, snapshots and warnings; its writer and its checked reader."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from forensics.rundir.checks import Invalid, need, need_int, need_number, need_type, short
from forensics.rundir.format import EVENTS_FILE, CorruptFileError, OutsideRunError, RunFormatWarning
from forensics.rundir.jsonsafe import jsonsafe
from forensics.rundir.paths import inside, is_regular_file


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
        event = {"type": type_, **jsonsafe(fields)}  # non-finite floats as "nan"/"inf" strings
        line = (json.dumps(event, allow_nan=False) + "\n").encode()
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
        return event


# What each event type must hold (docs/format.md): key -> (check, required). Unknown event
# types and unknown keys are kept unchecked: a newer writer may add them.
_INT, _INT_OR_NULL, _NUM, _STR, _BOOL = "int", "int|null", "number", "str", "bool"
_EVENT_FIELDS = {
    "spike_open": {"spike_id": (_INT, True), "step": (_INT, True), "loss": (_NUM, False),
                   "baseline": (_NUM, False), "score": (_NUM, False), "signal": (_STR, False)},
    "spike_reopen": {"spike_id": (_INT, True), "step": (_INT, True), "loss": (_NUM, False),
                     "signal": (_STR, False)},
    "spike": {"spike_id": (_INT, True), "onset": (_INT, True), "peak": (_INT, True),
              "end": (_INT_OR_NULL, False), "peak_loss": (_NUM, True), "baseline": (_NUM, True),
              "magnitude": (_NUM, True), "signal": (_STR, False), "nonfinite": (_BOOL, False)},
    "snapshot": {"step": (_INT, True), "role": (_STR, False), "spike_id": (_INT_OR_NULL, False),
                 "file": (_STR, True), "bytes": (_INT, False)},
    "warning": {"step": (_INT_OR_NULL, False), "message": (_STR, False)},
    "close": {"step": (_INT, False), "wall_time": (_NUM, False)},
}
# What a killed append can leave: a prefix of `{"type": "` or of one line written by EventLog.
_LINE_START = b'{"type": "'


def check_event(event) -> None:
    """Raise `Invalid` (from forensics.rundir.checks) naming the key of `event` that is wrong."""
    if not isinstance(event, dict):
        raise Invalid(f"not a JSON object: {short(event)}")
    need(isinstance(event.get("type"), str), "type", event.get("type"), "a string")
    for key, (kind, required) in _EVENT_FIELDS.get(event["type"], {}).items():
        if kind == _INT or kind == _INT_OR_NULL:
            need_int(event, key, optional=not required, nullable=kind == _INT_OR_NULL,
                     minimum=0 if key == "bytes" else None)
        elif kind == _NUM:
            need_number(event, key, optional=not required, nullable=True)
        else:
            need_type(event, key, str if kind == _STR else bool, f"a {kind}", optional=not required)


def _torn(tail: bytes) -> bool:
    """A last line without its newline that a killed append can leave (a start of an event
    line), or zeros a lost write can leave; anything else is garbage."""
    return (tail.startswith(_LINE_START) or _LINE_START.startswith(tail)
            or not tail.strip(b"\x00"))


def read_events(run_dir: Path | str, *, notes: list | None = None) -> list[dict]:
    """Every event of `events.jsonl`, in order, each checked (`check_event`), snapshot files
    checked to lie inside the run. [] when the file does not exist.

    Every line ending in a newline must be a valid event. Only the last line, when it lacks
    its newline, is not a JSON object and looks like an interrupted append (see `_torn`), is
    dropped: with a note appended to `notes`, or a `RunFormatWarning` when `notes` is None.

    Raises:
        CorruptFileError: a complete line is not JSON or not a valid event; the message
            names the file, the line and the key.
        OutsideRunError: a `snapshot` event's `file` resolves outside the run directory.
    """
    path = Path(run_dir) / EVENTS_FILE
    if not os.path.lexists(path):
        return []
    inside(run_dir, EVENTS_FILE)
    if not is_regular_file(path):
        raise CorruptFileError(path, "not a regular file")
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    if tail.strip() and (_is_object(tail) or not _torn(tail)):
        lines.append(tail)  # a whole event lacking only its newline, or garbage: checked like any line
    elif tail.strip():
        _note(notes, f"{path}: torn last line ({len(tail)} bytes, an interrupted write) ignored")
    events = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            check_event(event)
            if event["type"] == "snapshot":
                inside(run_dir, event["file"], what="snapshot file")
        except OutsideRunError as e:
            raise OutsideRunError(path, f"line {i}: {e.reason}") from None
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            what = str(e) if isinstance(e, Invalid) else f"not JSON ({e})"
            raise CorruptFileError(path, f"line {i}: {what}") from None
        events.append(event)
    return events


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


def _note(notes: list | None, text: str) -> None:
    if notes is None:
        warnings.warn(text, RunFormatWarning, stacklevel=3)
    else:
        notes.append(text)
