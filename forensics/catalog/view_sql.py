"""The SQL of each catalog view over the runs' files: one branch per run, joined by name.

`create_views(con, runs)` makes the views `runs`, `steps`, `spikes`, `measurements`, `findings`,
`snapshots`, `events` and `whatif` in `con` (see forensics.catalog.views for the connection and
docs/sql.md for the columns).
"""

from __future__ import annotations

from pathlib import Path

from forensics.catalog.discover import RunEntry
from forensics.catalog.facts import create_run_table
from forensics.catalog.schema import VIEWS, empty_select, projection
from forensics.rundir.format import ANALYSIS_DIR, EVENTS_FILE, STEPS_DIR


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


def create_views(con, runs: list[RunEntry]) -> None:
    """Create every view of the catalog over `runs` in the DuckDB connection `con`."""
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
    cols = ", ".join(f"coalesce(u.{c}, o.{c}) AS {c}" if c in ("sub_peaks", "recovered") else f'u."{c}"'
                     for c, _, _ in VIEWS["spikes"])
    con.execute(f"""CREATE VIEW spikes AS SELECT {cols}
        FROM ({_union('spikes', analyzed + [online])}) u
        LEFT JOIN (SELECT run_id, spike_id, sub_peaks, recovered FROM _online_spikes) o
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
               CAST(coalesce(json_array_length(event->'sub_peaks'), 1) AS INTEGER) AS sub_peaks,
               CASE WHEN event->>'end' IS NULL THEN NULL  -- still open (a non-finite run's last episode)
                    ELSE coalesce(TRY_CAST(event->>'recovered' AS BOOLEAN), true) END AS recovered
        FROM marks WHERE type = 'spike'
        QUALIFY row_number() OVER (PARTITION BY run_id, spike_id
                                   ORDER BY end_step IS NOT NULL DESC, sub_peaks DESC, end_step DESC) = 1),
    opened AS (
        SELECT run_id, spike_id, min(mark_step) AS onset_step, arg_max(mark_step, value) AS peak_step,
               CAST(NULL AS BIGINT) AS end_step, max(value) AS peak_loss,
               max(TRY_CAST(event->>'baseline' AS DOUBLE)) AS baseline_loss,
               max(value) / max(TRY_CAST(event->>'baseline' AS DOUBLE)) AS magnitude,
               CAST(count(*) AS INTEGER) AS sub_peaks, CAST(NULL AS BOOLEAN) AS recovered
        FROM marks WHERE type IN ('spike_open', 'spike_reopen')
        GROUP BY run_id, spike_id
        HAVING count(*) FILTER (WHERE type = 'spike_open') > 0)
    SELECT run_id, spike_id, onset_step, peak_step, end_step, peak_loss, baseline_loss, magnitude,
           {_SPIKE_TAIL}, sub_peaks, recovered FROM closed
    UNION ALL
    SELECT o.run_id, o.spike_id, o.onset_step, o.peak_step, o.end_step, o.peak_loss, o.baseline_loss,
           o.magnitude, {_SPIKE_TAIL}, o.sub_peaks, o.recovered
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
