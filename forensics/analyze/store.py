"""Writes the analyzer's tables into `<run>/analysis/` as Parquet, atomically (docs/format.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from forensics.rundir.atomic import atomic_path
from forensics.rundir.format import ANALYSIS_DIR, ANALYSIS_TABLES

_ARROW = {"VARCHAR": pa.string(), "JSON": pa.string(), "INTEGER": pa.int32(),
          "BIGINT": pa.int64(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_()}
TABLES = {name: pa.schema([(col, _ARROW[kind]) for col, kind, _ in columns])
          for name, columns in ANALYSIS_TABLES.items()}


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
