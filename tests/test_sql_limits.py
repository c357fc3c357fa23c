"""Limits of the catalog's SQL (issue #11): a time limit through DuckDB's interrupt, a row limit,
one cursor per query (a slow query never blocks another), a private temp directory, and the
read-only guard against every way SQL could read a file or change the connection."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

import forensics.cli as cli
from forensics.catalog import limits
from forensics.catalog.limits import QueryTimeoutError
from forensics.catalog.views import connect, query, run_query
from test_catalog_fixtures import make_catalog_runs

SLOW = "SELECT count(*) AS n FROM steps a, steps b, steps c, steps d"  # 900⁴ rows: hours
runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return make_catalog_runs(tmp_path_factory.mktemp("limits"))


@pytest.fixture(autouse=True)
def no_limit_env(monkeypatch):
    monkeypatch.delenv(limits.TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(limits.MAX_ROWS_ENV, raising=False)


# --- the time limit -------------------------------------------------------------------------

def test_a_cross_join_is_stopped_at_the_time_limit(runs):
    cat = connect(runs)
    t0 = time.monotonic()
    with pytest.raises(QueryTimeoutError, match=r"query exceeded the time limit \(1 s\)"):
        query(cat, SLOW, timeout_s=1)
    assert time.monotonic() - t0 < 6
    # control: the catalog still answers, and a quick query is not stopped
    assert query(cat, "SELECT count(*) AS n FROM steps", timeout_s=1).to_pylist() == [{"n": 900}]


def test_defaults_are_ten_seconds_and_ten_thousand_rows(monkeypatch):
    assert limits.resolve() == (10.0, 10_000)
    monkeypatch.setenv(limits.TIMEOUT_ENV, "2.5")
    monkeypatch.setenv(limits.MAX_ROWS_ENV, "0")
    assert limits.resolve() == (2.5, None)
    assert limits.resolve(0, 7) == (None, 7)
    monkeypatch.setenv(limits.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="FORENSICS_SQL_TIMEOUT"):
        limits.resolve()
    with pytest.raises(ValueError, match="--max-rows"):
        limits.resolve(1, -3)


def test_cli_sql_stops_a_cross_join_with_exit_2(runs):
    t0 = time.monotonic()
    r = runner.invoke(cli.app, ["sql", SLOW, str(runs), "--timeout", "1"])
    assert time.monotonic() - t0 < 8
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: query exceeded the time limit (1 s)")


def test_cli_sql_takes_the_time_limit_from_the_environment(runs, monkeypatch):
    monkeypatch.setenv(limits.TIMEOUT_ENV, "1")
    r = runner.invoke(cli.app, ["sql", SLOW, str(runs)])
    assert r.exit_code == 2 and "time limit (1 s)" in r.stderr
    r = runner.invoke(cli.app, ["sql", "SELECT 1 AS x", str(runs), "--timeout", "-1"])
    assert r.exit_code == 2 and "--timeout" in r.stderr


# --- the row limit --------------------------------------------------------------------------

def test_cli_sql_max_rows_cuts_and_says_so(runs):
    r = runner.invoke(cli.app, ["sql", "SELECT range AS i FROM range(25)", str(runs),
                                "--format", "csv", "--max-rows", "10"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == ["i"] + [str(i) for i in range(10)]
    assert "only the first 10 rows" in r.stderr
    r = runner.invoke(cli.app, ["sql", "SELECT range AS i FROM range(25)", str(runs),
                                "--format", "csv", "--max-rows", "0"])
    assert len(r.stdout.splitlines()) == 26 and "only the first" not in r.stderr
    r = runner.invoke(cli.app, ["sql", "SELECT range AS i FROM range(10)", str(runs),
                                "--format", "csv", "--max-rows", "10"])  # exactly at the limit
    assert len(r.stdout.splitlines()) == 11 and "only the first" not in r.stderr


def test_cli_sql_default_row_limit_is_ten_thousand(runs):
    r = runner.invoke(cli.app, ["sql", "SELECT range AS i FROM range(10005)", str(runs),
                                "--format", "csv"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 10_001
    assert "only the first 10000 rows" in r.stderr


def test_row_limit_streams_a_cross_join_instead_of_computing_it(runs):
    cat = connect(runs)
    t0 = time.monotonic()
    result = run_query(cat, "SELECT a.step, b.step AS step_b FROM steps a, steps b", max_rows=100,
                       timeout_s=10)
    assert time.monotonic() - t0 < 5
    assert result.truncated and result.table.num_rows == 100
    small = run_query(cat, "SELECT * FROM runs", max_rows=100)
    assert not small.truncated and small.table.num_rows == 3


# --- no process-wide lock -------------------------------------------------------------------

def test_a_long_query_does_not_block_a_short_one(runs):
    cat = connect(runs)
    done = {}

    def long():
        try:
            query(cat, SLOW, timeout_s=8)
        except QueryTimeoutError:
            done["long"] = time.monotonic()

    thread = threading.Thread(target=long)
    t0 = time.monotonic()
    thread.start()
    time.sleep(0.5)  # the long query is running
    assert query(cat, "SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 3}]
    short = time.monotonic()
    assert thread.is_alive(), "the long query should still be running"
    thread.join(20)
    assert short - t0 < 5 and done["long"] - t0 >= 7.5 and done["long"] > short


# --- DuckDB's temp directory ----------------------------------------------------------------

def test_temp_files_go_to_a_private_directory_outside_the_runs(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.txt").write_text("secret")  # DuckDB's old default temp folder
    cat = connect(runs)
    temp = Path(cat.temp_directory)
    assert temp.is_dir() and stat.S_IMODE(temp.stat().st_mode) == 0o700
    assert not temp.is_relative_to(tmp_path) and not temp.is_relative_to(runs)
    cur = cat.con.cursor()
    assert cur.execute("SELECT current_setting('temp_directory')").fetchall() == [(str(temp),)]
    # the sandbox (below the guard) no longer lets SQL read the working directory's .tmp
    with pytest.raises(duckdb.PermissionException):
        cur.execute("SELECT content FROM read_text('.tmp/secret.txt')").fetchall()
    with pytest.raises(duckdb.PermissionException):
        cur.execute(f"SELECT content FROM read_text('{tmp_path}/.tmp/secret.txt')").fetchall()
    # and the guard refuses every direct read of the private folder
    (temp / "spill.csv").write_text("a\n1\n")
    for sql in (f"SELECT * FROM glob('{temp}/*')", f"SELECT * FROM read_blob('{temp}/spill.csv')",
                f"SELECT * FROM read_csv('{temp}/spill.csv')", f"SELECT * FROM '{temp}/spill.csv'",
                "SELECT * FROM read_text(current_setting('temp_directory') || '/spill.csv')"):
        with pytest.raises(ValueError, match="refused|reads only its views"):
            query(cat, sql)
    cat.close()
    assert not temp.exists()


# --- the read-only guard --------------------------------------------------------------------

HOSTILE_SELECTS = [
    "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')", "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')", "SELECT * FROM read_json('/etc/x.json')",
    "SELECT * FROM read_json_objects('/etc/x.json')", "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM parquet_metadata('/etc/x.parquet')", "SELECT * FROM read_duckdb('/etc/x.db')",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",  # httpfs
    "SELECT * FROM '/etc/passwd'", "SELECT * FROM 'x.csv'", "SUMMARIZE '/etc/passwd'",
    "DESCRIBE '/etc/x.csv'", "SELECT * FROM query('SELECT * FROM read_text(''/etc/hostname'')')",
    "SELECT * FROM query_table('/etc/passwd')",
    "SELECT * FROM steps, LATERAL (SELECT * FROM read_blob('/etc/hostname'))",
    "WITH a AS (SELECT * FROM read_text('/etc/hostname')) SELECT * FROM a",
    "SELECT (SELECT content FROM read_text('/etc/hostname')) AS c",
    "SELECT 1 UNION ALL SELECT size FROM read_blob('/etc/hostname')",
    "EXPLAIN SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM checkpoint()", "SELECT * FROM truncate_duckdb_logs()",
    "SELECT * FROM enable_logging()",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 42'))",
]
HOSTILE_STATEMENTS = [
    "ATTACH '/etc/x.db' AS x", "COPY steps TO '/tmp/out.csv'", "INSTALL httpfs", "LOAD httpfs",
    "PRAGMA enable_profiling", "SET enable_external_access = true",
    "SET allowed_directories = ['/']", "RESET enable_external_access",
    "SET temp_directory = '/tmp'", "CALL enable_logging()",
    "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
]


@pytest.mark.parametrize("sql", HOSTILE_SELECTS + HOSTILE_STATEMENTS)
def test_the_guard_refuses_file_reads_and_state_changes(runs, sql):
    cat = connect(runs)
    with pytest.raises(ValueError, match="refused|read-only|reads only its views"):
        query(cat, sql)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM range(3)", "SELECT * FROM generate_series(1, 3)",
    "SELECT key FROM events, json_each(event) LIMIT 3", "SELECT * FROM duckdb_views() LIMIT 1",
    "SELECT * FROM pragma_table_info('steps')", "DESCRIBE steps", "SUMMARIZE spikes",
    "SHOW TABLES", "FROM runs SELECT run_id", "SELECT * FROM main.runs",
    "WITH w AS (SELECT * FROM steps) SELECT count(*) FROM w", "EXPLAIN SELECT * FROM steps",
])
def test_the_guard_lets_reading_the_views_through(runs, sql):
    assert query(connect(runs), sql).num_rows >= 1


def test_below_the_guard_the_sandbox_confines_reads_to_the_runs_and_locks_settings(runs):
    """What slips past the guard still meets DuckDB's own settings."""
    cur = connect(runs).cursor()
    run_json = runs / "adam-a" / "run.json"
    assert cur.execute(f"SELECT size FROM read_blob('{run_json}')").fetchall()[0][0] > 0
    for sql in ("SELECT * FROM read_text('/etc/hostname')", f"SELECT * FROM glob('{runs.parent}/*')",
                f"SELECT * FROM read_text('{runs}/adam-a/../../x')",
                "SELECT * FROM read_parquet('https://example.com/x.parquet')",
                "ATTACH '/tmp/forensics-attack.db' AS x"):
        with pytest.raises(duckdb.Error, match="[Pp]ermission|disabled|Cannot access"):
            cur.execute(sql).fetchall()
    assert not Path("/tmp/forensics-attack.db").exists()
    for sql in ("SET enable_external_access = true", "SET allowed_directories = ['/']",
                "SET lock_configuration = false", "SET temp_directory = '/tmp'"):
        with pytest.raises(duckdb.Error, match="locked|disabled|Cannot change"):
            cur.execute(sql)
    settings = dict(cur.execute("SELECT name, value FROM duckdb_settings() WHERE name IN "
                                "('enable_external_access', 'lock_configuration', "
                                "'autoinstall_known_extensions')").fetchall())
    assert settings == {"enable_external_access": "false", "lock_configuration": "true",
                        "autoinstall_known_extensions": "false"}
