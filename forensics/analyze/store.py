"""Writes the analyzer's tables into `<run>/analysis/` as Parquet, atomically (docs/format.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from forensics.rundir.atomic import atomic_path
from forensics.rundir.format import ANALYSIS_DIR

SPIKES_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("spike_id", pa.int32()), ("onset_step", pa.int64()),
    ("peak_step", pa.int64()), ("end_step", pa.int64()), ("peak_loss", pa.float64()),
    ("baseline_loss", pa.float64()), ("magnitude", pa.float64()), ("source", pa.string()),
    ("verdict", pa.string()), ("verdict_score", pa.float64()), ("verdict_message", pa.string()),
])
MEASUREMENTS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("spike_id", pa.int32()), ("step", pa.int64()),
    ("engine", pa.string()), ("metric", pa.string()), ("value", pa.float64()),
])
FINDINGS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("spike_id", pa.int32()), ("rule", pa.string()),
    ("status", pa.string()), ("score", pa.float64()), ("message", pa.string()),
    ("hint", pa.string()), ("reason", pa.string()), ("evidence", pa.string()),
    ("thresholds", pa.string()), ("primary", pa.bool_()),
])
TABLES = {"spikes": SPIKES_SCHEMA, "measurements": MEASUREMENTS_SCHEMA,
          "findings": FINDINGS_SCHEMA}


def write_analysis(run_dir: Path | str, tables: dict[str, Iterable[dict[str, Any]]],
                   meta: dict[str, Any]) -> Path:
    """Write spikes/measurements/findings Parquet files and meta.json; return the folder.

    Each file is replaced atomically; meta.json is written last, so a reader that sees the
    new meta.json sees the new tables. Rows are sorted so the same input gives the same bytes.
    """
    folder = Path(run_dir) / ANALYSIS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, schema in TABLES.items():
        rows = list(tables.get(name, ()))
        table = pa.Table.from_pylist(rows, schema=schema)
        with atomic_path(folder / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp)
    with atomic_path(folder / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return folder
