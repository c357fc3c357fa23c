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
from forensics.catalog.facts import check_facts, create_run_table
from forensics.catalog.schema import VIEWS, empty_select, projection
from forensics.rundir.format import ANALYSIS_DIR, EVENTS_FILE, STEPS_DIR

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
        if entry is not None:
            error = check_facts(entry)
            entry = None if error else entry
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
    _create_views(con, catalog.runs)
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


# --- the views -----------------------------------------------------------------------------

def _lit(text) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _files(folder: Path, pattern: str, files: list[Path], *, glob: bool = True) -> str:
    """A glob over `folder` (new chunks of a live run appear), or the explicit list when the
    folder's name holds glob characters or some file was left out (`glob=False`)."""
    if not glob or any(ch in str(folder) for ch in "*?[]{}"):
        return "[" + ", ".join(_lit(f) for f in files) + "]"
    return _lit(f"{folder}/{pattern}")


def _union(view: str, branches: list[str]) -> str:
    """The branches, or a typed empty relation when there are none."""
    return " UNION ALL BY NAME ".join(f"({b})" for b in branches) if branches else empty_select(view)


def _create_views(con, runs: list[RunEntry]) -> None:
    create_run_table(con, runs)

    steps = [f"SELECT {_lit(r.run_id)} AS run_id, {projection('steps', r.step_columns, r.step_types)} "
             "FROM read_parquet("
             f"{_files(r.path / STEPS_DIR, '*.parquet', r.step_files, glob=r.steps_complete)}"
             f"{'' if r.steps_uniform else ', union_by_name = true'})" for r in runs if r.step_files]
    con.execute(f"CREATE VIEW steps AS {_union('steps', steps)}")

    for table in ("measurements", "findings"):
        branches = [f"SELECT {_lit(r.run_id)} AS run_id, "
                    f"{projection(table, r.analysis_columns[table], r.analysis_types[table])} "
                    f"FROM read_parquet({_lit(r.path / ANALYSIS_DIR / f'{table}.parquet')})"
                    for r in runs if table in r.analysis_columns]
        con.execute(f"CREATE VIEW {table} AS {_union(table, branches)}")
    con.execute(f"CREATE VIEW whatif AS {_union('whatif', _whatif_branches(runs))}")

    raw = [f"SELECT {_lit(r.run_id)} AS run_id, json AS event "
           f"FROM read_json_objects({_lit(r.path / EVENTS_FILE)}, format = 'newline_delimited', "
           f"ignore_errors = true) WHERE json IS NOT NULL" for r in runs if r.has_events]
    raw_sql = " UNION ALL ".join(f"({b})" for b in raw) if raw else \
        "SELECT CAST(NULL AS VARCHAR) AS run_id, CAST(NULL AS JSON) AS event WHERE false"
    con.execute(f"""CREATE VIEW events AS
        SELECT run_id, event->>'type' AS type,
               TRY_CAST(coalesce(event->>'step', event->>'onset') AS BIGINT) AS step,
               TRY_CAST(event->>'spike_id' AS INTEGER) AS spike_id,
               event->>'message' AS message, event
        FROM ({raw_sql})""")

    con.execute(f"CREATE VIEW _online_spikes AS {_ONLINE_SPIKES}")
    analyzed = [f"SELECT {_lit(r.run_id)} AS run_id, "
                f"{projection('spikes', r.analysis_columns['spikes'], r.analysis_types['spikes'])} "
                f"FROM read_parquet({_lit(r.path / ANALYSIS_DIR / 'spikes.parquet')})"
                for r in runs if r.analyzed and "spikes" in r.analysis_columns]
    online = ("SELECT * FROM _online_spikes WHERE run_id IN "
              "(SELECT run_id FROM _catalog_runs WHERE NOT analyzed)")
    cols = ", ".join(f'u."{c}"' if c != "sub_peaks" else "coalesce(u.sub_peaks, o.sub_peaks) AS sub_peaks"
                     for c, _, _ in VIEWS["spikes"])
    con.execute(f"""CREATE VIEW spikes AS SELECT {cols}
        FROM ({_union('spikes', analyzed + [online])}) u
        LEFT JOIN (SELECT run_id, spike_id, sub_peaks FROM _online_spikes) o
          ON u.run_id = o.run_id AND u.spike_id = o.spike_id""")

    con.execute("""CREATE VIEW snapshots AS
        SELECT e.run_id, e.step, e.event->>'role' AS role, e.spike_id,
               e.event->>'file' AS file, r.path || '/' || (e.event->>'file') AS path,
               TRY_CAST(e.event->>'bytes' AS BIGINT) AS bytes
        FROM events e JOIN _catalog_runs r USING (run_id)
        WHERE e.type = 'snapshot'""")

    cols = []
    for c, _, _ in VIEWS["runs"]:
        if c == "num_spikes":
            cols.append("coalesce(s.n, 0) AS num_spikes")
        elif c == "num_snapshots":
            cols.append("coalesce(n.n, 0) AS num_snapshots")
        else:
            cols.append(f'r."{c}"')
    con.execute(f"""CREATE VIEW runs AS SELECT {', '.join(cols)}
        FROM _catalog_runs r
        LEFT JOIN (SELECT run_id, count(*) AS n FROM spikes GROUP BY run_id) s USING (run_id)
        LEFT JOIN (SELECT run_id, count(*) AS n FROM snapshots GROUP BY run_id) n USING (run_id)""")


_SPIKE_TAIL = ("'online' AS source, CAST(NULL AS VARCHAR) AS verdict, "
               "CAST(NULL AS DOUBLE) AS verdict_score, CAST(NULL AS VARCHAR) AS verdict_message")

# The recorder's spike episodes, by the rule of forensics.rundir.spikes.spikes_from_events (a test
# checks they agree): closed ones from `spike` events (after a resume the same id may be closed twice:
# the one with an end, most sub-peaks, latest end wins), plus those still open at the end (a
# `spike_open` without its `spike`: peak = the highest of its open/re-open values, end NULL).
_ONLINE_SPIKES = f"""
    WITH marks AS (
        SELECT run_id, spike_id, type, event,
               CASE WHEN type = 'spike' THEN TRY_CAST(event->>'onset' AS BIGINT) ELSE step END AS mark_step,
               TRY_CAST(event->>(CASE WHEN type = 'spike' THEN 'peak_loss' ELSE 'loss' END) AS DOUBLE)
                   AS value
        FROM events WHERE type IN ('spike', 'spike_open', 'spike_reopen')),
    closed AS (
        SELECT run_id, spike_id, mark_step AS onset_step, TRY_CAST(event->>'peak' AS BIGINT) AS peak_step,
               TRY_CAST(event->>'end' AS BIGINT) AS end_step, value AS peak_loss,
               TRY_CAST(event->>'baseline' AS DOUBLE) AS baseline_loss,
               TRY_CAST(event->>'magnitude' AS DOUBLE) AS magnitude,
               CAST(coalesce(json_array_length(event->'sub_peaks'), 1) AS INTEGER) AS sub_peaks
        FROM marks WHERE type = 'spike'
        QUALIFY row_number() OVER (PARTITION BY run_id, spike_id
                                   ORDER BY end_step IS NOT NULL DESC, sub_peaks DESC, end_step DESC) = 1),
    opened AS (
        SELECT run_id, spike_id, min(mark_step) AS onset_step, arg_max(mark_step, value) AS peak_step,
               CAST(NULL AS BIGINT) AS end_step, max(value) AS peak_loss,
               max(TRY_CAST(event->>'baseline' AS DOUBLE)) AS baseline_loss,
               max(value) / max(TRY_CAST(event->>'baseline' AS DOUBLE)) AS magnitude,
               CAST(count(*) AS INTEGER) AS sub_peaks
        FROM marks WHERE type IN ('spike_open', 'spike_reopen')
        GROUP BY run_id, spike_id
        HAVING count(*) FILTER (WHERE type = 'spike_open') > 0)
    SELECT run_id, spike_id, onset_step, peak_step, end_step, peak_loss, baseline_loss, magnitude,
           {_SPIKE_TAIL}, sub_peaks FROM closed
    UNION ALL
    SELECT o.run_id, o.spike_id, o.onset_step, o.peak_step, o.end_step, o.peak_loss, o.baseline_loss,
           o.magnitude, {_SPIKE_TAIL}, o.sub_peaks
    FROM opened o ANTI JOIN closed c ON o.run_id = c.run_id AND o.spike_id = c.spike_id"""


def _whatif_branches(runs: list[RunEntry]) -> list[str]:
    """One SELECT per run with an analysis/whatif.parquet (written by `forensics whatif`)."""
    from forensics.catalog.discover import _parquet_facts
    from forensics.rundir.analysis import analysis_files
    from forensics.rundir.format import RunFormatError

    out = []
    for r in runs:
        try:
            path = analysis_files(r.path)[1].get("whatif")
            if path is None:
                continue
            _, columns, types, _ = _parquet_facts([path])
        except RunFormatError as e:
            r.notes.append(f"analysis/whatif.parquet skipped ({e}): its whatif rows are empty")
            continue
        out.append(f"SELECT {_lit(r.run_id)} AS run_id, {projection('whatif', columns, types)} "
                   f"FROM read_parquet({_lit(path)})")
    return out


def _lock(con, runs: list[RunEntry]) -> None:
    """From now on the connection reads only the runs' folders and cannot be reconfigured."""
    dirs = [str(r.path) + "/" for r in runs]
    con.execute("SET allowed_directories = ?", [dirs]) if dirs else None
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
