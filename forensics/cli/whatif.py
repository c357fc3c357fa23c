"""`forensics whatif RUN --spike N [--change ...]`: counterfactual replay of one spike."""

from __future__ import annotations

from pathlib import Path

import typer

from forensics.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    ReportFormat,
    _check_device,
    _fail,
    _one_line,
    app,
)


@app.command()
def whatif(
    run: Path = typer.Argument(..., help="the run directory"),
    spike: int = typer.Option(..., "--spike", help="spike id (see `forensics report RUN`)"),
    change: list[str] | None = typer.Option(
        None, "--change", help="a counterfactual: beta2=0.95, lr=x0.5, lr=hold, eps=1e-6, clip=1.0, "
                               "skip_batch=STEP, restore_optimizer; join with + to combine; repeat for "
                               "several (default: the hints of the spike's fired rules)"),
    format: ReportFormat = typer.Option(ReportFormat.text, "--format", help="text or json"),
    device: str | None = typer.Option("cpu", "--device", help="cpu (default), cuda, cuda:1"),
    save: bool = typer.Option(True, "--save/--no-save", help="store the result in analysis/whatif.parquet"),
    allow_import: bool = typer.Option(False, "--allow-import",
                                      help="allow importing the model factory / loss / optimizer "
                                           "named in run.json"),
):
    """Replay a spike's window from its earliest pre-onset snapshot, without a change (the self-check:
    it must reproduce the recorded losses and weights), then once per change; say whether each removes
    the spike. JSON: one object {run, spike_id, reproduced, replay_error, changes: [{change, peak_ratio,
    recorded_peak_ratio, spike_gone, recover_steps, losses}], ...}.

    Exit codes: 0 = the replay reproduced the recording; 2 = usage error (no such run or spike, a change
    that does not parse or apply, nothing to replay); 3 = the spike does not reproduce from its snapshot,
    or a file of the run it needs is unreadable (named).
    """
    from forensics.rundir.format import RunFormatError
    from forensics.rundir.jsonsafe import dumps
    from forensics.rundir.reader import open_run
    from forensics.whatif import store
    from forensics.whatif import whatif as run_whatif
    from forensics.whatif.text import selfcheck, sentence

    from forensics.catalog.discover import find_runs

    _, problems = find_runs([str(run)])
    if problems:  # no run there: a usage error, as for analyze and report
        _fail("; ".join(problems))
    dev = _check_device(device)
    try:
        result = run_whatif(open_run(run), spike, change or None, device=dev, allow_import=allow_import)
    except RunFormatError as e:  # a file of the run is unreadable: named, its own exit code
        _fail(_named(run, e), EXIT_PARTIAL)
    except (KeyError, ValueError, PermissionError, OSError) as e:
        _fail(_named(run, e))
    if save:
        try:
            store.save(run, result)
        except (ValueError, OSError) as e:
            typer.echo(f"note: {run}: result not stored: {_one_line(e)}", err=True)
    if format is ReportFormat.json:
        typer.echo(dumps(result.to_json(), ensure_ascii=False))
    else:
        check = selfcheck(result.reproduced, result.replay_error, result.tolerance, result.steps,
                          result.diagnosis)
        typer.echo(f"{result.run} spike {spike}: {check}")
        for c in result.changes:
            typer.echo("  " + sentence(c.change, c.peak_ratio, c.recorded_peak_ratio, c.spike_gone,
                                       c.recover_steps))
        if result.changes:
            typer.echo(f"  ({result.criterion})")
        for note in result.notes:
            typer.echo(f"note: {note}", err=True)
    raise typer.Exit(EXIT_OK if result.reproduced else EXIT_PARTIAL)


def _named(run: Path, exc: BaseException) -> str:
    """The error's one line, prefixed by the run's path unless it already names it."""
    text = _one_line(exc).strip(chr(39))
    return text if text.startswith(str(run)) else f"{run}: {text}"
