"""Find the runs behind the paths a user gives, and check each run's files before a view reads them.

A path holding `run.json` is a run; any other folder stands for its direct subfolders that
hold one. Checking reads only JSON and Parquet footers, so it is cheap; what it finds missing
becomes a note; one unreadable steps chunk is left out with a note naming it; a broken
run.json, events.jsonl or analysis file, or a file outside the run, makes the run skipped
with the file named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from forensics.rundir.analysis import analysis_files
from forensics.rundir.format import (
    ANALYSIS_TABLES, EVENTS_FILE, MANIFEST_FILE, SNAPSHOTS_DIR, CorruptFileError, RunFormatError,
)
from forensics.rundir.paths import folder_inside
from forensics.rundir.reader import open_run
from forensics.rundir.steps import check_chunks, skip_note


@dataclass
class RunEntry:
    """One run as the catalog sees it: where it is, its manifest, and which files it can read."""

    run_id: str
    path: Path  # absolute
    manifest: dict
    step_files: list[Path] = field(default_factory=list)
    step_columns: list[str] = field(default_factory=list)  # union over chunks, in order
    step_types: dict[str, str] = field(default_factory=dict)  # column -> DuckDB type, when plain
    steps_uniform: bool = True  # every chunk has the same columns (no union_by_name needed)
    steps_complete: bool = True  # no chunk was skipped (a view may glob steps/*.parquet)
    skipped_files: list[Path] = field(default_factory=list)  # unreadable files left out (named in notes)
    num_steps: int = 0
    has_events: bool = False
    analyzed: bool = False
    analyzed_at: str | None = None
    analysis_columns: dict[str, list[str]] = field(default_factory=dict)  # table -> columns
    analysis_types: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def find_runs(paths) -> tuple[list[Path], list[str]]:
    """Run directories behind `paths` (absolute, deduplicated, in order) and the paths that hold none."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.name == MANIFEST_FILE and p.is_file():
            p = p.parent
        if not p.exists():
            problems.append(f"{raw}: no such file or directory")
        elif (p / MANIFEST_FILE).is_file():
            found.append(p.resolve())
        elif p.is_dir():
            subs = sorted(d for d in p.iterdir() if d.is_dir() and (d / MANIFEST_FILE).is_file())
            if subs:
                found.extend(d.resolve() for d in subs)
            else:
                problems.append(f"{raw}: not a run directory (no run.json) and no run directories inside")
        else:
            problems.append(f"{raw}: not a run directory")
    unique = list(dict.fromkeys(found))
    return unique, problems


def inspect_run(con, path: Path) -> RunEntry:
    """Check one run as the run-directory reader does (run.json and events.jsonl validated,
    every file inside the run) and read its Parquet footers; raise RunFormatError if broken.

    A steps chunk that cannot be read as steps is left out with a note naming it (the view then
    lists the remaining chunks explicitly). `con` is unused (kept for callers).
    """
    run = open_run(path)
    entry = RunEntry(run_id=str(run.run_id), path=path, manifest=run.manifest)

    footers, skipped = check_chunks(path)
    entry.step_files = list(footers)
    entry.notes.extend(skip_note(p, why) for p, why in skipped.items())
    entry.skipped_files = list(skipped)
    entry.steps_complete = not skipped
    if entry.step_files:
        entry.num_steps, entry.step_columns, entry.step_types, entry.steps_uniform = \
            _parquet_facts(entry.step_files, footers)
    elif not skipped:
        entry.notes.append("no steps/*.parquet: its steps are empty")

    folder_inside(path, SNAPSHOTS_DIR)  # a snapshots/ linked out of the run refuses the run
    entry.has_events = (path / EVENTS_FILE).is_file()
    if not entry.has_events:
        entry.notes.append("no events.jsonl: its online spikes, snapshots and events are empty")
    else:
        run.events  # noqa: B018  (checks every line; a bad one refuses the run, naming it)
    entry.notes.extend(run.notes)

    _inspect_analysis(entry)
    return entry


def _inspect_analysis(entry: RunEntry) -> None:
    meta, files = analysis_files(entry.path)
    if meta is None:
        entry.notes.append(
            ("analysis incomplete (no analysis/meta.json)" if files else "never analyzed")
            + ": spikes are the online detector's, measurements and findings are empty "
              f"(run `forensics analyze {entry.path}`)")
        return
    entry.analyzed = True
    entry.analyzed_at = str(meta["created"]) if meta.get("created") else None
    for table in ANALYSIS_TABLES:
        if table in files:
            _, entry.analysis_columns[table], entry.analysis_types[table], _ = _parquet_facts([files[table]])
        else:
            entry.notes.append(f"analysis/{table}.parquet missing: its {table} are empty")


def _parquet_facts(files: list[Path], footers: dict | None = None
                   ) -> tuple[int, list[str], dict[str, str], bool]:
    """From the footers of Parquet `files` (read here unless given in `footers`): total rows,
    the union of top-level column names in order, their DuckDB types where plain and the same
    in every file, and whether every file has the same columns.

    Raises:
        CorruptFileError: naming the first file whose footer cannot be read.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, columns, column_sets = 0, [], set()
    types: dict[str, str | None] = {}
    for f in files:
        try:
            meta = (footers or {}).get(f) or pq.read_metadata(f)
            schema = meta.schema.to_arrow_schema()
        except (pa.ArrowException, OSError) as e:
            raise CorruptFileError(f, f"cannot read Parquet footer ({_first_line(e)})") from None
        rows += meta.num_rows
        column_sets.add(tuple(schema.names))
        for field_ in schema:
            sqltype = _plain_type(field_.type)
            if field_.name not in types:
                columns.append(field_.name)
                types[field_.name] = sqltype
            elif types[field_.name] != sqltype:
                types[field_.name] = None
    plain = {c: t for c, t in types.items() if t is not None}
    return int(rows), columns, plain, len(column_sets) <= 1


def _plain_type(arrow_type) -> str | None:
    """The DuckDB type of a plain Arrow column type (ints, floats, bool, string), else None."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "VARCHAR"
    return {pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float64(): "DOUBLE",
            pa.float32(): "FLOAT", pa.bool_(): "BOOLEAN"}.get(arrow_type)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def check_run(con, path: Path) -> tuple[RunEntry | None, Exception | None]:
    """`inspect_run`, returning (None, the error naming the file) for a broken run."""
    try:
        return inspect_run(con, path), None
    except (RunFormatError, OSError) as e:
        return None, e
