"""DuckDB views over the files of one run, many runs or a folder of runs: `connect(paths)`.

Views: `runs`, `steps`, `spikes`, `measurements`, `findings`, `snapshots`, `events`, `whatif`, with the
columns of `forensics/catalog/schema.py` (docs/sql.md). Every row carries the `run_id` of its
run.json, so one query joins across runs. The Parquet and JSON files stay the source of
truth: the views read them at query time over absolute paths, in an in-memory database
made per connection (DuckDB's `read_parquet` / `read_json_objects`; one branch per run with
its run_id as a constant, joined by `UNION ALL BY NAME`, so a filter on run_id prunes whole
runs and columns a newer writer added survive).

Queries run each on a cursor of their own (forensics.catalog.limits), with an optional time
limit (DuckDB's interrupt) and row limit, so one slow query never holds up another.
DuckDB's temporary files go to a private directory made for the catalog (`tempfile.mkdtemp`,
mode 0700, removed when the connection goes), never to `.tmp` under the working directory.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from forensics.catalog import guard
from forensics.catalog.limits import QueryResult, run_statement
from forensics.catalog.discover import RunEntry, check_run, find_runs
from forensics.catalog.view_sql import create_views

VIEW_NAMES = ("runs", "steps", "spikes", "measurements", "findings", "snapshots", "events", "whatif")


@dataclass
class Catalog:
    """An open catalog: `.con` (DuckDB connection with the views), `.notes` (what was missing
    or skipped, one sentence each), `.runs` (the runs it opened), `.skipped` (path -> why),
    `.not_runs` (given paths that hold no run), `.temp_directory` (DuckDB's private spill
    folder). Unpacks as `con, notes = connect(...)`. Thread-safe: `query` gives each
    statement a cursor of its own."""

    con: object
    notes: list[str] = field(default_factory=list)
    runs: list[RunEntry] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    not_runs: list[str] = field(default_factory=list)
    temp_directory: str | None = None  # DuckDB's private spill folder (removed with the connection)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __iter__(self):
        return iter((self.con, self.notes))

    def cursor(self):
        """A new DuckDB cursor on the catalog's database: an independent connection with the
        same views and sandbox, for one query or one thread (close it when done)."""
        with self._lock:  # only the creation is serialised, never the queries
            return self.con.cursor()

    def sql(self, sql: str, params=None, **limits):
        """`query(self, sql, params, **limits)`: one read-only statement, as a pyarrow Table."""
        return query(self, sql, params, **limits)

    def close(self) -> None:
        """Close the DuckDB connection and delete its temporary directory."""
        self.con.close()
        _remove_temp_directory(self.temp_directory)

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(paths, *, strict: bool = False, sandbox: bool = True) -> Catalog:
    """Open DuckDB views over the runs behind `paths` (a run, several, or folders of runs).

    A run missing files, or never analyzed, still opens: its missing tables are empty (same
    columns, same types) and `notes` says what is missing. A broken run (unparseable run.json,
    a corrupt Parquet file, a newer format_version) is skipped with a note naming the file,
    and the others still open. With `strict=True` the first broken run or path that holds no
    run raises instead (`RunFormatError` / `ValueError`). With `sandbox=True` (default) the
    connection can afterwards read only the runs' folders and its settings are locked.
    DuckDB spills to a private folder made here (mode 0700, outside the runs and the working
    directory), removed by `close()` or when the connection is garbage-collected.

    Example:
        >>> cat = connect("sample_runs")                                  # doctest: +SKIP
        >>> cat.sql("SELECT run_id, count(*) FROM spikes GROUP BY 1")    # doctest: +SKIP
    """
    import duckdb

    run_dirs, problems = find_runs(paths)
    if strict and problems:
        raise ValueError(problems[0])
    temp = tempfile.mkdtemp(prefix="forensics-duckdb-")  # 0700, outside the runs and the cwd
    con = duckdb.connect(":memory:", config={"temp_directory": temp,
                                             "autoinstall_known_extensions": False,
                                             "allow_community_extensions": False})
    weakref.finalize(con, _remove_temp_directory, temp)
    catalog = Catalog(con=con, notes=list(problems), not_runs=list(problems), temp_directory=temp)
    ids: dict[str, Path] = {}
    for path in run_dirs:
        entry, error = check_run(con, path)
        if entry is None:
            if strict:
                raise error
            problem = f"skipped run {path}: {error}"
            catalog.skipped[str(path)] = problem
            catalog.notes.append(problem)
            continue
        if entry.run_id in ids:
            new_id = f"{entry.run_id}~{1 + sum(r.run_id.split('~')[0] == entry.run_id for r in catalog.runs)}"
            entry.notes.append(f"run_id {entry.run_id!r} is also the id of {ids[entry.run_id]}; "
                               f"shown as {new_id!r}")
            entry.run_id = new_id
        ids[entry.run_id] = path
        catalog.runs.append(entry)
        catalog.notes.extend(f"{entry.run_id}: {note}" for note in entry.notes)
    create_views(con, catalog.runs)
    if sandbox:
        _lock(con, catalog.runs)
    return catalog


def query(catalog: Catalog, sql: str, params=None, *, timeout_s: float | None = None,
          max_rows: int | None = None):
    """Run one read-only statement (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) and
    return a pyarrow Table. Anything else (INSERT, CREATE, COPY, ATTACH, SET, PRAGMA, …, a
    function that reads files), or several statements, raises ValueError saying so; so does
    SQL that fails, and a statement still running after `timeout_s` seconds
    (QueryTimeoutError, a ValueError). At most `max_rows` rows are returned; use
    `run_query` to learn whether rows were cut."""
    return run_query(catalog, sql, params, timeout_s=timeout_s, max_rows=max_rows).table


def run_query(catalog: Catalog, sql: str, params=None, *, timeout_s: float | None = None,
              max_rows: int | None = None) -> QueryResult:
    """`query`, returning a QueryResult (`.table`, `.truncated`). On a Catalog the statement
    runs on a cursor of its own, so other threads' queries do not wait for it; on a bare
    DuckDB connection it runs on that connection."""
    import duckdb

    own = isinstance(catalog, Catalog)
    cur = catalog.cursor() if own else catalog
    try:
        statement = guard.check_read_only(cur, sql)
        return run_statement(cur, statement, params, timeout_s=timeout_s, max_rows=max_rows)
    except duckdb.Error as e:
        raise ValueError(f"SQL failed: {guard.one_line(e)}") from e
    finally:
        if own:
            cur.close()


def _remove_temp_directory(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _lock(con, runs: list[RunEntry]) -> None:
    """From now on the connection reads only the runs' folders and cannot be reconfigured."""
    dirs = [str(r.path) + "/" for r in runs]
    con.execute("SET allowed_directories = ?", [dirs]) if dirs else None
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
