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

# Tables written by later commands, not by `analyze` (which leaves them as they are).
# whatif: one row per replay of a spike by `forensics whatif` (docs/whatif.md).
EXTRA_TABLES: dict[str, list[tuple[str, str, str]]] = {
    "whatif": [
        ("run_id", "VARCHAR", "the run"),
        ("spike_id", "INTEGER", "the spike replayed"),
        ("change", "VARCHAR", "the counterfactual, e.g. beta2=0.95; 'none' for the no-change self-check"),
        ("rule", "VARCHAR", "the fired rule whose hint it tests (NULL when named by the user)"),
        ("reproduced", "BOOLEAN", "the no-change replay matched the recording within tolerance"),
        ("replay_error", "DOUBLE", "largest relative distance of the no-change replay's losses and weights"),
        ("tolerance", "DOUBLE", "the tolerance reproduced was judged against"),
        ("peak_ratio", "DOUBLE", "peak of the replayed curve from the onset on / pre-onset baseline"),
        ("recorded_peak_ratio", "DOUBLE", "the same on the recorded curve"),
        ("spike_gone", "BOOLEAN", "peak_ratio below the stated criterion (docs/whatif.md)"),
        ("recover_steps", "INTEGER",
         "steps from the onset until back under the criterion (NULL: not in the window)"),
        ("curve", "VARCHAR", "'loss' (training loss) or 'reference' (mean loss of the window's batches)"),
        ("steps", "JSON", "the replayed steps"),
        ("losses", "JSON", "replayed training loss per step (null where skipped)"),
        ("curve_values", "JSON", "the curve peak_ratio is measured on, per step"),
        ("recorded", "JSON", "the recorded curve per step"),
        ("diagnosis", "VARCHAR", "why the replay did not reproduce, else empty"),
        ("created", "VARCHAR", "ISO-8601 UTC time of the replay"),
    ],
}


def _arrow_schemas(tables: dict = ANALYSIS_TABLES) -> dict:
    import pyarrow as pa

    arrow = {"VARCHAR": pa.string(), "JSON": pa.string(), "INTEGER": pa.int32(),
             "BIGINT": pa.int64(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_()}
    return {name: pa.schema([(col, arrow[kind]) for col, kind, _ in columns])
            for name, columns in tables.items()}


def write_extra_table(run_dir: Path | str, name: str, rows: Iterable[dict[str, Any]]) -> Path:
    """Replace `analysis/<name>.parquet` (a table of EXTRA_TABLES) atomically with `rows`; the
    analyzer's tables and meta.json are left as they are. Returns the file.

    Raises:
        KeyError: `name` is not one of EXTRA_TABLES.
        OutsideRunError: `analysis/` or the file is a link leaving the run directory.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schemas(EXTRA_TABLES)[name]
    folder_inside(run_dir, ANALYSIS_DIR)
    (Path(run_dir) / ANALYSIS_DIR).mkdir(parents=True, exist_ok=True)
    final = inside(run_dir, Path(ANALYSIS_DIR) / f"{name}.parquet", what="analysis table")
    with atomic_path(final) as tmp:
        pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), tmp)
    return final


def read_extra_table(run_dir: Path | str, name: str) -> list[dict[str, Any]]:
    """The rows of `analysis/<name>.parquet` (a table of EXTRA_TABLES); [] when absent.

    Raises:
        CorruptFileError: the file is not a regular file or not readable Parquet.
        OutsideRunError: it is a link leaving the run directory.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, files = analysis_files(run_dir)
    if name not in files:
        return []
    try:
        return pq.read_table(files[name]).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise CorruptFileError(files[name], f"cannot read as Parquet ({e})") from None


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
    for name in (*ANALYSIS_TABLES, *EXTRA_TABLES):
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
