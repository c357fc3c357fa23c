"""The commands over recorded runs: record the sample runs, analyze spikes, report findings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from forensics.cli.common import (EXIT_NOT_ANALYZED, EXIT_OK, EXIT_PARTIAL, EXIT_SPIKES, ReportFormat,
                                  _check_device, _fail, _one_line, _open, _progress, app)


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
    mechanisms: Optional[str] = typer.Option(
        None, "--mechanisms",
        help="comma-separated subset of rules, e.g. sharpness,catapult; only rules of role 'ascent' give "
             "a verdict (docs/analysis.md lists the roles), and a spike that none of the chosen "
             "explains names the ascent rules not judged"),
    allow_import: bool = typer.Option(False, "--allow-import",
                                      help="allow importing the model factory / loss named in run.json"),
):
    """Replay every spike of each run, measure it, judge it, write analysis/ into the run.

    A folder of runs expands to its runs. Progress goes to stderr, one line per run to stdout.

    Exit codes: 0 = every run analyzed; 2 = usage error, nothing done; 3 = some run could not be read or analyzed (named on stderr; the others were analyzed); 4 = every run analyzed but some spike is not_analyzed (an engine failed, the model or loss could not be rebuilt, the onset was not captured: the reason is on stderr and in its verdict message).
    """  # noqa: E501  (typer prints docstring lines as they are: one line per paragraph)
    from forensics.analyzer.mechanisms import NOT_ANALYZED, check_mechanisms
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

    failed = not_analyzed = 0
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
            label = path.name if result.run_id == path.name else f"{path.name} (run_id {result.run_id})"
            bar.update(task, description=f"{path.name}: {len(result.spikes)} spike(s)", completed=1, total=1)
            typer.echo(f"{label}: {len(result.spikes)} spike(s) analyzed: {verdicts}")
            for note in result.notes:
                typer.echo(f"note: {label}: {note}", err=True)
            for s in result.spikes:
                if s.verdict == NOT_ANALYZED:
                    not_analyzed += 1
                    typer.echo(f"not analyzed: {label} spike {s.context.spike_id}: "
                               f"{_one_line(s.verdict_message)}", err=True)
    if failed:
        raise typer.Exit(EXIT_PARTIAL)
    if not_analyzed:
        raise typer.Exit(EXIT_NOT_ANALYZED)


@app.command()
def report(
    runs: List[Path] = typer.Argument(..., help="run directories, or folders of runs"),
    format: ReportFormat = typer.Option(ReportFormat.text, "--format", help="text or json"),
    hints: bool = typer.Option(True, "--hints/--no-hints",
                               help="print the mitigation hint under fired findings"),
):
    """Report each spike's verdict and findings, like a linter: run:step  mechanism  status  message.

    One header line per spike carries its verdict; runs never analyzed show the online spikes as "not analyzed". JSON: a list of spikes (run, spike_id, onset_step, peak_step, end_step, verdict, findings with mechanism, status, score, message, hint, evidence, ...).

    Exit codes: 0 = no spikes; 1 = spikes found; 2 = usage error (a path that holds no run, a bad --format); 3 = some run could not be read (named on stderr; the others were reported); 4 = some spike's verdict is not_analyzed (its evidence could not be measured; the reason is its verdict message).
    """  # noqa: E501  (typer prints docstring lines as they are: one line per paragraph)
    from forensics.analyzer.mechanisms import NOT_ANALYZED
    from forensics.catalog.report import collect, render_text, summary

    with _open(runs) as catalog:
        spikes = collect(catalog)
        if format is ReportFormat.json:
            typer.echo(json.dumps(spikes, indent=2, ensure_ascii=False))
        else:
            for line in render_text(spikes, catalog.runs, hints=hints):
                typer.echo(line)
            typer.echo(summary(spikes, len(catalog.runs), len(catalog.skipped)))
        code = (EXIT_PARTIAL if catalog.skipped else
                EXIT_NOT_ANALYZED if any(s["verdict"] == NOT_ANALYZED for s in spikes) else
                EXIT_SPIKES if spikes else EXIT_OK)
    raise typer.Exit(code)
