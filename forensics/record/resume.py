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


_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def write_state(run_dir: Path | str, state: dict) -> None:
    """Write the recorder state (`{"step", "detector", "snapshots"}`) atomically to detector.json
    (NaN/Inf as the strings "nan"/"inf"/"-inf", through the one NaN-safe JSON helper)."""
    from forensics.rundir.atomic import write_bytes
    from forensics.rundir.jsonsafe import dumps

    write_bytes(Path(run_dir) / STATE_FILE, (dumps(state) + "\n").encode())


def _numbers(value):
    """The special strings back to floats (no string field of the state takes those values)."""
    if isinstance(value, str):
        return _SPECIAL.get(value, value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def read_state(run_dir: Path | str) -> dict | None:
    """detector.json as a dict, or None when there is none. CorruptFileError naming it if unreadable."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = _numbers(json.loads(path.read_text()))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptFileError(path, f"not JSON ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CorruptFileError(path, "not a recorder state (an object with an int 'step')")
    return state


@dataclass
class ResumePoint:
    """Where a resumed recorder starts: its first step, the next chunk index, the persisted state,
    and the recorded (step, loss, probe, batch rows) rows the state does not cover yet (to replay)."""

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
    names = [c for c in ("step", "loss", "probe_loss", "batch_rows") if c in table.column_names]
    cols = table.select(names).to_pydict() if table.num_rows else {"step": []}
    last = max(cols["step"], default=-1)
    start = last + 1 if start_step is None else start_step
    covered = state["step"] if state is not None else -1
    n = len(cols["step"])
    loss, probe, rows = (cols.get(k, [None] * n) for k in ("loss", "probe_loss", "batch_rows"))
    replay = [(s, _num(v), _num(p), r) for s, v, p, r in zip(cols["step"], loss, probe, rows, strict=True)
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


def open_manifest(run_dir: Path, cfg, resuming: bool, model, optimizer, keys: dict, loss_spec: str, detector,
                  objective) -> tuple[dict, str]:
    """(run.json's object, run id): the run's own when resuming, else a new manifest, written."""
    from forensics.rundir.manifest import build_manifest, load_manifest, write_manifest

    if resuming:
        manifest = load_manifest(run_dir).to_dict()
        objective.restore()
        return manifest, cfg.run_id or manifest.get("run_id") or run_dir.resolve().name
    run_id = cfg.run_id or run_dir.resolve().name
    manifest = build_manifest(
        model, optimizer, run_id=run_id, model_factory=cfg.model_factory, model_kwargs=cfg.model_kwargs,
        loss=loss_spec, batch_keys=keys, detector=detector.config.to_dict(),
        recorder=cfg.manifest_entry(objective.kind), task=cfg.task, seed=cfg.seed, hf_config=cfg.hf_config)
    write_manifest(run_dir, manifest)
    return manifest, run_id


def restore(point: ResumePoint, detector, snaps, sink, step: int) -> None:
    """Restore the detector (persisted state, then the recorded rows it does not cover, replayed
    without writing their events again) and the snapshot budgets; log a `resume` event."""
    if point.state is not None:
        detector.load_state_dict(point.state["detector"])
    for s, v, p, r in point.replay:
        detector.update(s, v, probe=p, rows=r)
    snaps.load_state_dict(point.snapshots)
    snaps.capturing, snaps.tail_left = detector.current_spike_id, 0
    sink.event({"type": "resume", "step": step, "replayed": len(point.replay),
                "message": f"resumed at step {step}; detector state restored"})


__all__ = ["STATE_FILE", "ResumePoint", "open_manifest", "read_state", "restore", "resume_point",
           "write_state"]
