"""The `forensics` command line: record the demo runs, analyze, report findings, run SQL, open the app.

A mistake a person makes (a path that holds no run, an unknown mechanism, SQL that fails or
writes) ends with one line on stderr and exit code 2, never a traceback. Heavy imports
(torch, the analyzer) happen inside the commands that need them.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer

EXIT_OK, EXIT_SPIKES, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3

EXIT_CODES = ("Exit codes: 0 = done, no spikes; 1 = spikes found (report); 2 = usage error (a path "
              "that holds no run, an unknown option value, SQL that fails or writes; nothing was "
              "done); 3 = some run could not be read or analyzed (named on stderr; the others "
              "were done).")

app = typer.Typer(
    name="forensics", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="spike forensics: a flight recorder and investigator for loss spikes.\n\n" + EXIT_CODES,
)


def _fail(message: str, code: int = EXIT_USAGE):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _open(runs: List[Path], *, notes: bool = True):
    """A catalog over `runs`; exit 2 naming any path that holds no run. Skipped runs go to
    stderr as errors, the other notes (missing files, never analyzed) only with `notes`."""
    from forensics.catalog.views import connect

    catalog = connect([str(p) for p in runs])
    if catalog.not_runs:
        catalog.close()
        _fail("; ".join(catalog.not_runs))
    for note in catalog.notes:
        if note.startswith("skipped run"):
            typer.echo(f"error: {note}", err=True)
        elif notes:
            typer.echo(f"note: {note}", err=True)
    return catalog


@app.command()
def demo(
    out: Path = typer.Argument(Path("sample_runs"), help="folder to record the sample runs into"),
    only: Optional[List[str]] = typer.Option(None, "--only", help="record only this run (repeat, or a,b)"),
    if_missing: bool = typer.Option(False, "--if-missing", help="keep runs that already have a run.json"),
):
    """Record the sample runs (one per mechanism plus clean controls) into OUT."""
    from forensics.demo import make_all

    names = [n.strip() for item in (only or []) for n in item.split(",") if n.strip()] or None
    try:
        make_all(out, names=names, if_missing=if_missing, log=typer.echo)
    except ValueError as e:
        _fail(str(e))


@app.command()
def analyze(
    runs: List[Path] = typer.Argument(..., help="run directories, or folders of runs"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if present)"),
    mechanisms: Optional[str] = typer.Option(None, "--mechanisms", help="comma-separated subset, e.g. sharpness,catapult"),
    allow_import: bool = typer.Option(False, "--allow-import",
                                      help="allow importing the model factory / loss named in run.json"),
):
    """Replay every spike of each run, measure it, judge it, write analysis/ into the run.

    A folder of runs expands to its runs. Progress goes to stderr, one line per run to stdout.

    Exit codes: 0 = every run analyzed; 2 = usage error, nothing done; 3 = some run could not be read or analyzed (named on stderr; the others were analyzed).
    """
    from forensics.analyzer.mechanisms import check_mechanisms
    from forensics.catalog.discover import find_runs

    chosen = None
    if mechanisms:
        try:
            chosen = check_mechanisms(m.strip() for m in mechanisms.split(",") if m.strip())
        except ValueError as e:
            _fail(str(e))
    run_dirs, problems = find_runs([str(p) for p in runs])
    if problems:
        _fail("; ".join(problems))
    dev = _check_device(device)

    from forensics.analyzer.pipeline import analyze as run_analysis
    from forensics.rundir.format import RunFormatError
    from forensics.rundir.reader import open_run

    failed = 0
    with _progress() as bar:
        for path in run_dirs:
            task = bar.add_task(path.name, total=None)

            def progress(spike_id, engine, done, total, task=task, name=path.name):
                bar.update(task, description=f"{name} spike {spike_id}: {engine}",
                           completed=done, total=total)

            try:
                result = run_analysis(open_run(path), device=dev, mechanisms=chosen,
                                      allow_import=allow_import, progress=progress)
            except Exception as e:  # one broken run must not stop the others
                bar.update(task, description=f"{path.name}: failed", completed=1, total=1)
                kind = "" if isinstance(e, (RunFormatError, ValueError, OSError)) else f"{type(e).__name__}: "
                bar.console.print(f"error: {path}: {kind}{_one_line(e)}", markup=False, highlight=False)
                failed += 1
                continue
            verdicts = ", ".join(s.verdict for s in result.spikes) or "no spikes"
            bar.update(task, description=f"{path.name}: {len(result.spikes)} spike(s)", completed=1, total=1)
            typer.echo(f"{result.run_id}: {len(result.spikes)} spike(s) analyzed: {verdicts}")
            for note in result.notes:
                typer.echo(f"note: {result.run_id}: {note}", err=True)
    if failed:
        raise typer.Exit(EXIT_PARTIAL)


@app.command()
def report(
    runs: List[Path] = typer.Argument(..., help="run directories, or folders of runs"),
    format: str = typer.Option("text", "--format", help="text or json"),
    hints: bool = typer.Option(True, "--hints/--no-hints", help="print the mitigation hint under fired findings"),
):
    """Report each spike's verdict and findings, like a linter: run:step  mechanism  status  message.

    One header line per spike carries its verdict; runs never analyzed show the online spikes as "not analyzed". JSON: a list of spikes (run, spike_id, onset_step, peak_step, end_step, verdict, findings with mechanism, status, score, message, hint, evidence, ...).

    Exit codes: 0 = no spikes; 1 = spikes found; 2 = usage error (a path that holds no run, a bad --format); 3 = some run could not be read (named on stderr; the others were reported).
    """
    from forensics.catalog.report import collect, render_text, summary

    if format not in ("text", "json"):
        _fail(f"--format must be text or json, got {format!r}")
    with _open(runs) as catalog:
        spikes = collect(catalog)
        if format == "json":
            typer.echo(json.dumps(spikes, indent=2, ensure_ascii=False))
        else:
            for line in render_text(spikes, catalog.runs, hints=hints):
                typer.echo(line)
            typer.echo(summary(spikes, len(catalog.runs), len(catalog.skipped)))
        code = EXIT_PARTIAL if catalog.skipped else (EXIT_SPIKES if spikes else EXIT_OK)
    raise typer.Exit(code)


@app.command()
def sql(
    statement: str = typer.Argument(..., help="one read-only SELECT, e.g. \"SELECT * FROM spikes\""),
    runs: List[Path] = typer.Argument(..., help="run directories, or folders of runs"),
    format: str = typer.Option("table", "--format", help="table, csv or json"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="stop the query after this many seconds (default 10 or $FORENSICS_SQL_TIMEOUT; 0 = none)"),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", help="print at most this many rows, saying so on stderr (default 10000 or $FORENSICS_SQL_MAX_ROWS; 0 = all)"),
):
    """Run one read-only SQL statement over the views runs, steps, spikes, measurements, findings, snapshots, events (docs/sql.md).

    Exit codes: 0 = done; 2 = usage error (a path that holds no run, SQL that fails or writes, a query past its time limit); 3 = some run could not be read (named on stderr; the query ran over the others).
    """
    import duckdb

    from forensics.catalog import limits
    from forensics.catalog.guard import check_read_only
    from forensics.catalog.views import run_query

    if format not in ("table", "csv", "json"):
        _fail(f"--format must be table, csv or json, got {format!r}")
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
    sql_timeout: Optional[float] = typer.Option(None, "--sql-timeout", help="time limit of every query in seconds (default 10; 0 = none)"),
    sql_max_rows: Optional[int] = typer.Option(None, "--sql-max-rows", help="rows the SQL page fetches at most (default 10000; 0 = all)"),
):
    """Open the Streamlit app on RUN_DIR (streamlit run app.py -- RUN_DIR), with Streamlit's usage statistics off."""
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


def _check_device(device: str | None):
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        _fail(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {device}: no CUDA device on this machine")
    return dev


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=False)


def _print_table(table, format: str) -> None:
    names = table.column_names
    rows = table.to_pylist()
    if format == "json":
        typer.echo(json.dumps([{k: _jsonable(v) for k, v in r.items()} for r in rows],
                              indent=2, ensure_ascii=False))
    elif format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([[_cell(r[n]) for n in names] for r in rows])
        sys.stdout.flush()
    else:
        from rich.console import Console
        from rich.table import Table

        out = Table(show_edge=False, header_style="bold")
        for n in names:
            out.add_column(n, overflow="fold")
        for r in rows:
            out.add_row(*[_cell(r[n]) for n in names])
        Console(width=max(100, _terminal_width())).print(out)
        typer.echo(f"({len(rows)} row{'s' * (len(rows) != 1)})")


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 160


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(_jsonable(value), ensure_ascii=False)
    return str(value)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main() -> None:
    """Console-script entry point (`forensics`)."""
    app()


if __name__ == "__main__":
    main()
