"""What every `forensics` command shares: the Typer app, exit codes, opening a catalog, printing tables."""

from __future__ import annotations

import csv
import math
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List

import typer

from forensics.rundir.jsonsafe import dumps

EXIT_OK, EXIT_SPIKES, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


class ReportFormat(str, Enum):
    """`forensics report --format`: lines like a linter, or the spikes as JSON."""

    text = "text"
    json = "json"


class TableFormat(str, Enum):
    """`forensics sql --format`: a table for people, CSV or JSON (a list of row objects)."""

    table = "table"
    csv = "csv"
    json = "json"

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


def _print_table(table, format: TableFormat) -> None:
    names = table.column_names
    rows = table.to_pylist()
    if format is TableFormat.json:
        typer.echo(dumps(rows, fallback=str, indent=2, ensure_ascii=False))
    elif format is TableFormat.csv:
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
        return dumps(value, fallback=str, ensure_ascii=False)
    return str(value)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
