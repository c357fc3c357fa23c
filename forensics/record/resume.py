"""Continuing a recorded run in the same folder: the recorder's persisted state (`detector.json`,
written atomically with every steps chunk and at close) and where a resumed Recorder picks up."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from forensics.rundir.events import read_events
from forensics.rundir.format import CorruptFileError

STATE_FILE = "detector.json"


def write_state(run_dir: Path | str, state: dict) -> None:
    """Write the recorder state (`{"step", "detector", "snapshots"}`) atomically to detector.json."""
    from forensics.rundir.atomic import write_bytes

    write_bytes(Path(run_dir) / STATE_FILE, (json.dumps(state) + "\n").encode())  # NaN/Infinity kept


def read_state(run_dir: Path | str) -> dict | None:
    """detector.json as a dict, or None when there is none. CorruptFileError naming it if unreadable."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptFileError(path, f"not JSON ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CorruptFileError(path, "not a recorder state (an object with an int 'step')")
    return state


@dataclass
class ResumePoint:
    """Where a resumed recorder starts: its first step, the next chunk index, the persisted state,
    and the recorded (step, loss, probe) rows the state does not cover yet (to replay)."""

    start_step: int
    next_chunk: int
    state: dict | None
    replay: list = field(default_factory=list)
    snapshots: dict = field(default_factory=dict)


def resume_point(run_dir: Path | str, start_step: int | None) -> ResumePoint:
    """Read what a resumed Recorder needs from the run in `run_dir` (see `ResumePoint`)."""
    from forensics.rundir.steps import chunk_files, read_steps

    run_dir = Path(run_dir)
    state = read_state(run_dir)
    table = read_steps(run_dir, notes=[])
    cols = table.select(["step", "loss", "probe_loss"]).to_pydict() if table.num_rows else {"step": []}
    last = max(cols["step"], default=-1)
    start = last + 1 if start_step is None else start_step
    covered = state["step"] if state is not None else -1
    replay = [(s, _num(v), _num(p)) for s, v, p in zip(cols["step"], cols.get("loss", []), cols.get("probe_loss", []))
              if covered < s < start]
    indices = [int(p.stem.split("-")[1]) for p in chunk_files(run_dir) if p.stem.split("-")[-1].isdigit()]
    snaps = (state or {}).get("snapshots") or _snapshot_budget(run_dir)
    return ResumePoint(start, max(indices, default=-1) + 1, state, replay, snaps)


def _num(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _snapshot_budget(run_dir: Path) -> dict:
    """The snapshot budgets used so far, from events.jsonl (a run without detector.json)."""
    snaps = [e for e in read_events(run_dir, notes=[]) if e.get("type") == "snapshot"]
    return {"spikes_captured": len({e.get("spike_id") for e in snaps if e.get("role") == "onset"}),
            "bytes": sum(int(e.get("bytes", 0)) for e in snaps),
            "last_saved": max((int(e["step"]) for e in snaps), default=-1)}


__all__ = ["STATE_FILE", "ResumePoint", "read_state", "resume_point", "write_state"]
