"""Per-step scalars: Parquet chunks under `steps/`, written atomically, read as one table."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from forensics.rundir import atomic
from forensics.rundir.format import (
    STEP_COLUMNS, STEP_TYPES, STEPS_DIR, CorruptFileError, RunFormatWarning, chunk_name, is_temp,
)
from forensics.rundir.paths import folder_inside, inside, is_regular_file


def _schema():
    import pyarrow as pa

    return pa.schema([(c, getattr(pa, STEP_TYPES.get(c, "float64"))()) for c in STEP_COLUMNS])


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
    """The chunk files of a run, in step order (temp files ignored), each checked to lie inside
    the run; not checked for content (see `check_chunks`).

    Raises:
        OutsideRunError: `steps/` or a chunk is a link leaving the run directory.
    """
    folder = folder_inside(run_dir, STEPS_DIR)
    if folder is None:
        return []
    files = sorted(p for p in folder.glob("*.parquet") if not is_temp(p))
    for p in files:
        if p.is_symlink():  # the folder is inside; only a link can lead out
            inside(run_dir, Path(STEPS_DIR) / p.name, what="steps chunk")
    return files


def chunk_footer(path: Path | str):
    """(the Parquet footer of a chunk, None) when it reads as steps, else (None, why).

    Reads only the footer. A documented column (docs/format.md) must hold integers where the
    contract says int, numbers where it says float64 (or nulls); `step` must be present.
    Extra columns are free.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not is_regular_file(path):
        return None, "not a regular file"
    try:
        footer = pq.read_metadata(path)
        schema = footer.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as e:
        return None, f"cannot read Parquet footer ({_first_line(e)})"
    if "step" not in schema.names:
        return None, "no step column"
    contract = _schema()
    for name in STEP_COLUMNS:
        if name not in schema.names:
            continue
        have, want = schema.field(name).type, contract.field(name).type
        ok = (pa.types.is_null(have) or have == want
              or (pa.types.is_integer(have) and not pa.types.is_string(want))
              or (pa.types.is_floating(have) and pa.types.is_floating(want)))
        if not ok:
            return None, f"column {name!r} is {have}, the contract says {want}"
    return footer, None


def check_chunks(run_dir: Path | str) -> tuple[dict, dict[Path, str]]:
    """({chunk that reads as steps: its Parquet footer}, {chunk skipped: why}), in step order;
    see `chunk_footer`.

    Raises:
        OutsideRunError: `steps/` or a chunk is a link leaving the run directory.
    """
    good, skipped = {}, {}
    for path in chunk_files(run_dir):
        footer, problem = chunk_footer(path)
        if problem is None:
            good[path] = footer
        else:
            skipped[path] = problem
    return good, skipped


def skip_note(path: Path, why: str) -> str:
    """The note for a steps chunk left out: names it and says why."""
    return f"{path}: skipped ({why}); the other steps chunks are read"


def read_steps(run_dir: Path | str, *, notes: list | None = None, gaps: list | None = None):
    """All readable chunks as one pyarrow Table sorted by `step`, documented columns in the
    contract's types (an empty table with the schema if none).

    `gaps`, when given, receives one `StepsGap` per skipped chunk: the steps it must have held,
    from the last step of the readable chunk before it to the first of the one after (chunks
    are numbered in step order; None where no readable chunk bounds it).

    A chunk that cannot be read as steps (see `chunk_footer`, or data that does not convert)
    is skipped; its note, naming it, goes to `notes`, or to a `RunFormatWarning` when `notes`
    is None. Never a silent NULL.

    Raises:
        OutsideRunError: `steps/` or a chunk is a link leaving the run directory.
        CorruptFileError: the chunks disagree on the type of an extra column.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    files, skipped = check_chunks(run_dir)
    contract = _schema()
    tables, spans = [], {}
    for path in files:
        try:
            table = pq.read_table(path)
            fields = [contract.field(f.name) if f.name in STEP_COLUMNS else f for f in table.schema]
            tables.append(table.cast(pa.schema(fields)))
            spans[path] = _span(tables[-1])
        except (pa.ArrowException, OSError) as e:
            skipped[path] = _first_line(e)
    if gaps is not None:
        gaps.extend(_gaps(chunk_files(run_dir), spans, skipped))
    for text in (skip_note(p, why) for p, why in skipped.items()):
        if notes is None:
            warnings.warn(text, RunFormatWarning, stacklevel=2)
        else:
            notes.append(text)
    if not tables:
        return contract.empty_table()
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as e:
        raise CorruptFileError(Path(run_dir) / STEPS_DIR, f"chunks disagree on column types "
                                                          f"({_first_line(e)})") from None
    return table.sort_by("step")


@dataclass(frozen=True)
class StepsGap:
    """Steps a skipped chunk must have held: `after` < step < `before` (None: unbounded)."""

    path: Path
    why: str
    after: int | None
    before: int | None

    def overlaps(self, lo: int | None, hi: int | None) -> bool:
        """Whether some step in lo..hi (None: unbounded) may be among the lost ones."""
        return ((hi is None or self.after is None or hi > self.after)
                and (lo is None or self.before is None or lo < self.before))

    def describe(self) -> str:
        """'steps a–b unreadable (<path>: why)', for a reason."""
        lo = "start" if self.after is None else self.after + 1
        hi = "end" if self.before is None else self.before - 1
        return f"steps {lo}–{hi} unreadable ({self.path}: {self.why})"


def _span(table) -> tuple[int, int] | None:
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return None
    bounds = pc.min_max(table.column("step"))
    return int(bounds["min"].as_py()), int(bounds["max"].as_py())


def _gaps(files: list[Path], spans: dict, skipped: dict) -> list[StepsGap]:
    """One `StepsGap` per skipped chunk, bounded by the readable chunks around it in file order."""
    out = []
    for i, path in enumerate(files):
        if path not in skipped:
            continue
        before = [spans[p] for p in files[:i] if spans.get(p)]
        after = [spans[p] for p in files[i + 1:] if spans.get(p)]
        out.append(StepsGap(path, skipped[path], before[-1][1] if before else None,
                            after[0][0] if after else None))
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
