"""The commands that read the catalog: one SQL statement, and the Streamlit app."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer

from forensics.cli.common import EXIT_OK, EXIT_PARTIAL, TableFormat, _fail, _open, _print_table, app


@app.command()
def sql(
    statement: str = typer.Argument(..., help="one read-only SELECT, e.g. \"SELECT * FROM spikes\""),
    runs: List[Path] = typer.Argument(..., help="run directories, or folders of runs"),
    format: TableFormat = typer.Option(TableFormat.table, "--format", help="table, csv or json"),
    timeout: Optional[float] = typer.Option(
        None, "--timeout",
        help="stop the query after this many seconds (default 10 or $FORENSICS_SQL_TIMEOUT; 0 = none)"),
    max_rows: Optional[int] = typer.Option(
        None, "--max-rows", help="print at most this many rows, saying so on stderr "
                                 "(default 10000 or $FORENSICS_SQL_MAX_ROWS; 0 = all)"),
):
    """Run one read-only SQL statement over the views runs, steps, spikes, measurements, findings, snapshots, events (docs/sql.md).

    Exit codes: 0 = done; 2 = usage error (a path that holds no run, SQL that fails or writes, a query past its time limit); 3 = some run could not be read (named on stderr; the query ran over the others).
    """  # noqa: E501  (typer prints docstring lines as they are: one line per paragraph)
    import duckdb

    from forensics.catalog import limits
    from forensics.catalog.guard import check_read_only
    from forensics.catalog.views import run_query

    try:
        timeout_s, row_limit = limits.resolve(timeout, max_rows)
        check_read_only(duckdb.connect(":memory:"), statement)  # refuse a write before touching any run
    except ValueError as e:
        _fail(str(e))
    with _open(runs, notes=False) as catalog:
        try:
            result = run_query(catalog, statement, timeout_s=timeout_s, max_rows=row_limit)
        except ValueError as e:
            _fail(str(e))
        _print_table(result.table, format)
        if result.truncated:
            typer.echo(f"note: only the first {result.max_rows} rows are shown; the result has more "
                       "(--max-rows 0 prints all)", err=True)
        code = EXIT_PARTIAL if catalog.skipped else EXIT_OK
    raise typer.Exit(code)


@app.command("app")
def open_app(
    run_dir: Path = typer.Argument(Path("sample_runs"), help="a run, or a folder of runs"),
    port: Optional[int] = typer.Option(None, "--port", help="port for the Streamlit server"),
    sql_timeout: Optional[float] = typer.Option(
        None, "--sql-timeout", help="time limit of every query in seconds (default 10; 0 = none)"),
    sql_max_rows: Optional[int] = typer.Option(
        None, "--sql-max-rows", help="rows the SQL page fetches at most (default 10000; 0 = all)"),
):
    """Open the Streamlit app on RUN_DIR (streamlit run app.py -- RUN_DIR), with Streamlit's usage statistics off."""  # noqa: E501
    from forensics.catalog import limits

    if not run_dir.exists():
        _fail(f"{run_dir}: no such file or directory")
    try:  # the app reads its limits from its environment
        os.environ.update(limits.as_environment(sql_timeout, sql_max_rows))
    except ValueError as e:
        _fail(str(e))
    script = find_app()
    if script is None:
        _fail("app.py not found beside the forensics package or in the current folder")
    if importlib.util.find_spec("streamlit") is None:
        _fail("streamlit is not installed: pip install 'spike-forensics[app]'")
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--browser.gatherUsageStats", "false"]
    if port is not None:
        cmd += ["--server.port", str(port)]
    cmd += ["--", str(run_dir.resolve())]
    raise typer.Exit(subprocess.call(cmd))


def find_app() -> Path | None:
    """app.py of the repository the package lives in, else of the current folder."""
    import forensics

    for candidate in (Path(forensics.__file__).resolve().parent.parent / "app.py", Path.cwd() / "app.py"):
        if candidate.is_file():
            return candidate
    return None
