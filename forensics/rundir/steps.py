"""Per-step scalars: Parquet chunks under `steps/`, written atomically, read as one table."""

from __future__ import annotations

from pathlib import Path

from forensics.rundir import atomic
from forensics.rundir.format import STEPS_DIR, STEP_COLUMNS, CorruptFileError, chunk_name, is_temp


def _schema():
    import pyarrow as pa

    types = {"step": pa.int64(), "optimizer_step": pa.int64(), "spike_id": pa.int32()}
    return pa.schema([(c, types.get(c, pa.float64())) for c in STEP_COLUMNS])


def write_chunk(run_dir: Path | str, index: int, rows: dict[str, list]) -> Path:
    """Write one chunk of step rows (`{column: values}`) as `steps/chunk-<index>.parquet`.

    Unknown columns are kept (additive change); missing known columns are written as null.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    n = len(rows["step"])
    arrays, fields = [], []
    for field in schema:
        values = rows.get(field.name, [None] * n)
        arrays.append(pa.array(values, type=field.type))
        fields.append(field)
    for name, values in rows.items():
        if name not in STEP_COLUMNS:
            arr = pa.array(values)
            arrays.append(arr)
            fields.append(pa.field(name, arr.type))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    final = Path(run_dir) / STEPS_DIR / chunk_name(index)
    final.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_with(final, lambda tmp: pq.write_table(table, tmp))
    return final


def chunk_files(run_dir: Path | str) -> list[Path]:
    """The complete chunk files of a run, in step order (temp files ignored)."""
    folder = Path(run_dir) / STEPS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not is_temp(p))


def read_steps(run_dir: Path | str):
    """All chunks as one pyarrow Table sorted by `step` (empty table with the schema if none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in chunk_files(run_dir):
        try:
            tables.append(pq.read_table(path))
        except (pa.ArrowInvalid, OSError) as e:
            raise CorruptFileError(path, f"cannot read Parquet chunk ({e})") from None
    if not tables:
        return _schema().empty_table()
    table = pa.concat_tables(tables, promote_options="default")
    return table.sort_by("step")
