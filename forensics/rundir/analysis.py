"""`analysis/`: the analyzer's tables as Parquet plus `meta.json`; their writer and the checks
a reader makes before reading them (docs/format.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from forensics.rundir.atomic import atomic_path
from forensics.rundir.format import ANALYSIS_DIR, ANALYSIS_TABLES, CorruptFileError
from forensics.rundir.jsonsafe import dumps
from forensics.rundir.paths import folder_inside, inside, is_regular_file

META_FILE = "meta.json"


def _arrow_schemas() -> dict:
    import pyarrow as pa

    arrow = {"VARCHAR": pa.string(), "JSON": pa.string(), "INTEGER": pa.int32(),
             "BIGINT": pa.int64(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_()}
    return {name: pa.schema([(col, arrow[kind]) for col, kind, _ in columns])
            for name, columns in ANALYSIS_TABLES.items()}


def write_analysis(run_dir: Path | str, tables: dict[str, Iterable[dict[str, Any]]],
                   meta: dict[str, Any]) -> Path:
    """Write spikes/measurements/findings Parquet files and meta.json; return the folder.

    Each file is replaced atomically; meta.json is written last, so a reader that sees the
    new meta.json sees the new tables. Rows are sorted so the same input gives the same bytes.

    Raises:
        OutsideRunError: `analysis/` is a link leaving the run directory (nothing is written).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(run_dir) / ANALYSIS_DIR
    folder_inside(run_dir, ANALYSIS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    for name, schema in _arrow_schemas().items():
        rows = list(tables.get(name, ()))
        table = pa.Table.from_pylist(rows, schema=schema)
        final = inside(run_dir, Path(ANALYSIS_DIR) / f"{name}.parquet", what="analysis table")
        with atomic_path(final) as tmp:
            pq.write_table(table, tmp)
    final = inside(run_dir, Path(ANALYSIS_DIR) / META_FILE, what="analysis meta")
    with atomic_path(final) as tmp:
        tmp.write_text(dumps(meta, fallback=str, indent=2, sort_keys=True) + "\n")
    return folder


def analysis_files(run_dir: Path | str) -> tuple[dict | None, dict[str, Path]]:
    """(meta.json's object or None when the run was never analyzed, {table: file} of the
    tables present), every file checked to lie inside the run and to be a regular file.

    Raises:
        OutsideRunError: `analysis/` or a file in it is a link leaving the run directory.
        CorruptFileError: meta.json is not a JSON object, or a file is not a regular file.
    """
    folder = folder_inside(run_dir, ANALYSIS_DIR)
    if folder is None:
        return None, {}
    files = {}
    for name in ANALYSIS_TABLES:
        path = folder / f"{name}.parquet"
        if path.exists() or path.is_symlink():
            files[name] = _regular(run_dir, path)
    meta_path = folder / META_FILE
    if not (meta_path.exists() or meta_path.is_symlink()):
        return None, files
    _regular(run_dir, meta_path)
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptFileError(meta_path, f"cannot parse as JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CorruptFileError(meta_path, "not a JSON object")
    return meta, files


def _regular(run_dir: Path | str, path: Path) -> Path:
    inside(run_dir, Path(ANALYSIS_DIR) / path.name, what=f"{ANALYSIS_DIR}/{path.name}")
    if not is_regular_file(path):
        raise CorruptFileError(path, "not a regular file")
    return path
