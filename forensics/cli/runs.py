"""The commands over recorded runs: record the sample runs, analyze spikes, report findings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from forensics.cli.common import (EXIT_OK, EXIT_PARTIAL, EXIT_SPIKES, ReportFormat, _check_device, _fail,
                                  _one_line, _open, _progress, app)


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
    device: Optional[str] = typer.Option(None, "--device",
                                         help="cpu, cuda, cuda:1 (default: cuda if present)"),
    mechanisms: Optional[str] = typer.Option(None, "--mechanisms",
                                             help="comma-separated subset, e.g. sharpness,catapult"),
    allow_import: bool = typer.Option(False, "--allow-import",
                                      help="allow importing the model factory / loss named in run.json"),
):
    """Replay every spike of each run, measure it, judge it, write analysis/ into the run.

    A folder of runs expands to its runs. Progress goes to stderr, one line per run to stdout.

    Exit codes: 0 = every run analyzed; 2 = usage error, nothing done; 3 = some run could not be read or analyzed (named on stderr; the others were analyzed).
    """  # noqa: E501  (typer prints docstring lines as they are: one line per paragraph)
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
                bar.console.print(f"error: {path}: {kind}{_one_line(e)}", markup=False, highlight=False,
                                  soft_wrap=True)
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
    format: ReportFormat = typer.Option(ReportFormat.text, "--format", help="text or json"),
    hints: bool = typer.Option(True, "--hints/--no-hints",
                               help="print the mitigation hint under fired findings"),
):
    """Report each spike's verdict and findings, like a linter: run:step  mechanism  status  message.

    One header line per spike carries its verdict; runs never analyzed show the online spikes as "not analyzed". JSON: a list of spikes (run, spike_id, onset_step, peak_step, end_step, verdict, findings with mechanism, status, score, message, hint, evidence, ...).

    Exit codes: 0 = no spikes; 1 = spikes found; 2 = usage error (a path that holds no run, a bad --format); 3 = some run could not be read (named on stderr; the others were reported).
    """  # noqa: E501  (typer prints docstring lines as they are: one line per paragraph)
    from forensics.catalog.report import collect, render_text, summary

    with _open(runs) as catalog:
        spikes = collect(catalog)
        if format is ReportFormat.json:
            typer.echo(json.dumps(spikes, indent=2, ensure_ascii=False))
        else:
            for line in render_text(spikes, catalog.runs, hints=hints):
                typer.echo(line)
            typer.echo(summary(spikes, len(catalog.runs), len(catalog.skipped)))
        code = EXIT_PARTIAL if catalog.skipped else (EXIT_SPIKES if spikes else EXIT_OK)
    raise typer.Exit(code)
