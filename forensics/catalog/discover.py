"""Find the runs behind the paths a user gives, and check each run's files before a view reads them.

A path holding `run.json` is a run; any other folder stands for its direct subfolders that
hold one. Checking reads only JSON and Parquet footers, so it is cheap; what it finds missing
becomes a note, what it finds broken makes the run skipped with the file named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from forensics.rundir.events import read_events
from forensics.rundir.format import (
    ANALYSIS_DIR, EVENTS_FILE, MANIFEST_FILE, CorruptFileError, RunFormatError,
)
from forensics.rundir.manifest import read_manifest
from forensics.rundir.steps import chunk_files

ANALYSIS_TABLES = ("spikes", "measurements", "findings")


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
    """Read the manifest and check every Parquet footer of one run; raise RunFormatError if broken."""
    manifest = read_manifest(path)
    run_id = str(manifest.get("run_id") or path.name)
    entry = RunEntry(run_id=run_id, path=path, manifest=manifest)

    entry.step_files = chunk_files(path)
    if entry.step_files:
        facts = _parquet_facts(con, entry.step_files)
        entry.num_steps, entry.step_columns, entry.step_types, entry.steps_uniform = facts
    else:
        entry.notes.append("no steps/*.parquet: its steps are empty")

    events = path / EVENTS_FILE
    entry.has_events = events.is_file()
    if not entry.has_events:
        entry.notes.append("no events.jsonl: its online spikes, snapshots and events are empty")
    else:
        try:
            read_events(path)
        except CorruptFileError as e:
            entry.notes.append(f"{e}; unparseable lines are ignored")

    _inspect_analysis(con, entry)
    return entry


def _inspect_analysis(con, entry: RunEntry) -> None:
    folder = entry.path / ANALYSIS_DIR
    meta = folder / "meta.json"
    if not meta.is_file():
        partial = folder.is_dir() and any((folder / f"{t}.parquet").is_file() for t in ANALYSIS_TABLES)
        entry.notes.append(
            ("analysis incomplete (no analysis/meta.json)" if partial else "never analyzed")
            + ": spikes are the online detector's, measurements and findings are empty "
              f"(run `forensics analyze {entry.path}`)")
        return
    try:
        info = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(meta, f"cannot parse as JSON ({e})") from None
    entry.analyzed = True
    entry.analyzed_at = str(info.get("created")) if isinstance(info, dict) and info.get("created") else None
    for table in ANALYSIS_TABLES:
        file = folder / f"{table}.parquet"
        if file.is_file():
            _, entry.analysis_columns[table], entry.analysis_types[table], _ = _parquet_facts(con, [file])
        else:
            entry.notes.append(f"analysis/{table}.parquet missing: its {table} are empty")


def _parquet_facts(con, files: list[Path]) -> tuple[int, list[str], dict[str, str], bool]:
    """From the footers of Parquet `files`: total rows, the union of top-level column names
    in order, their DuckDB types where plain and the same in every file, and whether every
    file has the same columns."""
    names = [str(f) for f in files]
    try:
        rows = con.execute("SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata(?)",
                           [names]).fetchall()[0][0]
        schema = con.execute("SELECT file_name, name, num_children, type, converted_type, "
                             "logical_type FROM parquet_schema(?)", [names]).fetchall()
    except Exception:  # find the culprit to name it
        for f in files:
            try:
                con.execute("SELECT 1 FROM parquet_file_metadata(?)", [str(f)]).fetchall()
            except Exception as e:
                raise CorruptFileError(f, f"cannot read Parquet footer ({_first_line(e)})") from None
        raise
    columns: list[str] = []
    types: dict[str, str | None] = {}
    by_file: dict[str, list[tuple]] = {}
    for file_name, name, num_children, ptype, converted, logical in schema:
        by_file.setdefault(file_name, []).append(
            (name, int(num_children or 0), _plain_type(ptype, converted, logical)))
    column_sets = set()
    for elements in by_file.values():
        top = _top_level(elements)
        column_sets.add(tuple(name for name, _ in top))
        for name, sqltype in top:
            if name not in columns:
                columns.append(name)
                types[name] = sqltype
            elif types[name] != sqltype:
                types[name] = None
    plain = {c: t for c, t in types.items() if t is not None}
    return int(rows), columns, plain, len(column_sets) <= 1


_PLAIN = {"INT64": "BIGINT", "INT32": "INTEGER", "DOUBLE": "DOUBLE", "FLOAT": "FLOAT",
          "BOOLEAN": "BOOLEAN"}


def _plain_type(ptype, converted, logical) -> str | None:
    """The DuckDB type of a Parquet leaf with no (or a string) annotation, else None."""
    if ptype == "BYTE_ARRAY" and (converted == "UTF8" or "String" in str(logical or "")):
        return "VARCHAR"
    if converted is None and logical is None:
        return _PLAIN.get(ptype)
    return None


def _top_level(elements: list[tuple]) -> list[tuple[str, str | None]]:
    """Top-level (name, plain type) from a depth-first Parquet schema list (root first);
    a nested column has no plain type."""
    out, i = [], 1
    for _ in range(elements[0][1] if elements else 0):
        name, children, sqltype = elements[i]
        out.append((name, None if children else sqltype))
        i = _skip(elements, i)
    return out


def _skip(elements: list[tuple], i: int) -> int:
    """Index just past element i and all its descendants."""
    children = elements[i][1]
    i += 1
    for _ in range(children):
        i = _skip(elements, i)
    return i


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def check_run(con, path: Path) -> tuple[RunEntry | None, Exception | None]:
    """`inspect_run`, returning (None, the error naming the file) for a broken run."""
    try:
        return inspect_run(con, path), None
    except (RunFormatError, OSError) as e:
        return None, e
