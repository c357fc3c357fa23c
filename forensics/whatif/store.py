"""The `whatif` table in `analysis/` (columns: forensics.rundir.analysis.EXTRA_TABLES): one row
for the self-check (change 'none') and one per change; a new replay of a spike replaces the
rows of the same change."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

from forensics.rundir.analysis import read_extra_table, write_extra_table
from forensics.rundir.jsonsafe import dumps

TABLE = "whatif"


def _json(values) -> str:
    """A JSON list; a skipped step (None or NaN) is null, ±inf "inf"/"-inf" (forensics.rundir.jsonsafe)."""
    return dumps([None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values])


def rows(result) -> list[dict]:
    """The table rows of a `WhatIf`."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    base = {"run_id": result.run, "spike_id": result.spike_id, "reproduced": result.reproduced,
            "replay_error": result.replay_error, "tolerance": result.tolerance, "curve": result.curve,
            "steps": json.dumps(result.steps), "recorded": _json(result.recorded_curve),
            "diagnosis": result.diagnosis, "created": now}
    out = [{**base, "change": "none", "rule": None, "losses": _json(result.replay_losses),
            "curve_values": _json(result.recorded_curve), "peak_ratio": None, "recorded_peak_ratio": None,
            "spike_gone": None, "recover_steps": None}]
    for c in result.changes:
        out.append({**base, "change": c.change, "rule": c.rule, "peak_ratio": c.peak_ratio,
                    "recorded_peak_ratio": c.recorded_peak_ratio, "spike_gone": c.spike_gone,
                    "recover_steps": c.recover_steps, "losses": _json(c.losses),
                    "curve_values": _json(c.reference if c.reference is not None else c.losses)})
    return out


def save(run_dir: Path | str, result) -> Path:
    """Merge `result` into `analysis/whatif.parquet` of `run_dir`: its rows replace any of the
    same spike and change; other rows are kept. Returns the file."""
    new = rows(result)
    keys = {(r["spike_id"], r["change"]) for r in new}
    if not result.reproduced:  # a failed self-check voids every earlier counterfactual of the spike
        keep = [r for r in read_extra_table(run_dir, TABLE) if r["spike_id"] != result.spike_id]
    else:
        keep = [r for r in read_extra_table(run_dir, TABLE) if (r["spike_id"], r["change"]) not in keys]
    all_rows = sorted(keep + new, key=lambda r: (r["spike_id"], r["change"] != "none", r["change"]))
    return write_extra_table(run_dir, TABLE, all_rows)


def load(run_dir: Path | str, spike_id: int | None = None) -> list[dict]:
    """Rows of `analysis/whatif.parquet` (of one spike when given), JSON columns decoded."""
    out = []
    for r in read_extra_table(run_dir, TABLE):
        if spike_id is not None and r["spike_id"] != spike_id:
            continue
        for k in ("steps", "losses", "curve_values", "recorded"):
            r[k] = [(float(v) if isinstance(v, str) else v) for v in json.loads(r[k] or "[]")]
        out.append(r)
    return out
