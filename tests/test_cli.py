"""The `forensics` command line through typer's CliRunner: output formats, one-line errors, exit codes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import forensics.cli as cli
from test_catalog_fixtures import make_catalog_runs, make_run

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return make_catalog_runs(tmp_path_factory.mktemp("cli"))


@pytest.fixture()
def copy(runs, tmp_path) -> Path:
    return Path(shutil.copytree(runs, tmp_path / "runs"))


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def one_error_line(result) -> str:
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def usage_error(result, option: str) -> str:
    """The message of a usage error typer/click reports itself (in a box), on one line."""
    assert "Traceback" not in result.output and result.stdout == ""
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.stderr).split())
    assert f"Invalid value for '{option}'" in text, result.stderr
    return text


# --- report --------------------------------------------------------------------------------

def test_report_text_is_grouped_per_spike_like_a_linter(runs):
    r = invoke("report", runs)
    assert r.exit_code == 1, r.output
    out = r.stdout.splitlines()
    headers = [line for line in out if " spike " in line and "verdict:" in line]
    assert len(headers) == 5
    assert headers[0].startswith("adam-a:100  spike 0  steps 100..120 (peak 104")
    assert "verdict: adam_beta2_lag (0.80)" in headers[0]
    assert any(h.startswith("sgd-c:120") and "verdict: not analyzed" in h for h in headers)
    finding = re.compile(r"^  (\S+):(\d+)  (\w+)\s+(fired|not_fired|inconclusive)\s+(.+)$")
    findings = [finding.match(line) for line in out if finding.match(line)]
    assert len(findings) == 12  # 4 analyzed spikes x 3 rules
    first = out.index(headers[0])
    assert finding.match(out[first + 1]).group(3, 4) == ("adam_beta2_lag", "fired")  # primary first
    assert "hint" in out[first + 2] and "lower β₂" in out[first + 2]
    assert out[-1].startswith("3 runs, 5 spikes")
    assert "never analyzed" in r.stderr


def test_report_no_hints_and_exit_0_without_spikes(tmp_path):
    make_run(tmp_path, "quiet", spikes=())
    r = invoke("report", tmp_path / "quiet")
    assert r.exit_code == 0, r.output
    assert "quiet: no spikes (300 steps)" in r.stdout
    r = invoke("report", "--no-hints", tmp_path / "quiet")
    assert r.exit_code == 0


def test_report_json_fields(runs):
    r = invoke("report", runs, "--format", "json")
    assert r.exit_code == 1
    spikes = json.loads(r.stdout)
    assert [(s["run"], s["spike_id"]) for s in spikes] == \
        [("adam-a", 0), ("adam-a", 1), ("sgd-b", 0), ("sgd-b", 1), ("sgd-c", 0)]
    s = spikes[2]
    for key in ("run", "spike_id", "onset_step", "peak_step", "end_step", "verdict", "findings"):
        assert key in s
    assert (s["onset_step"], s["peak_step"], s["end_step"], s["verdict"]) == (60, 63, 80, "sharpness")
    f = s["findings"][0]
    assert set(f) >= {"mechanism", "status", "score", "message", "hint", "evidence"}
    assert (f["mechanism"], f["status"], f["primary"]) == ("sharpness", "fired", True)
    assert f["evidence"]["at_step"] == 60 and isinstance(f["evidence"], dict)
    assert spikes[4]["verdict"] is None and spikes[4]["findings"] == [] and not spikes[4]["analyzed"]


def test_report_names_the_corrupt_run_and_reports_the_others(copy):
    (copy / "sgd-b" / "run.json").write_text("{broken")
    r = invoke("report", copy)
    assert r.exit_code == 3
    assert "adam-a:100  spike 0" in r.stdout and "sgd-c:120" in r.stdout and "sgd-b" not in r.stdout
    assert f"error: skipped run {copy / 'sgd-b'}" in r.stderr and "run.json" in r.stderr
    assert "1 run skipped" in r.stdout.splitlines()[-1]


def test_report_on_a_path_that_is_no_run_is_a_usage_error(tmp_path):
    r = invoke("report", tmp_path / "nope")
    assert r.exit_code == 2
    assert "no such file or directory" in one_error_line(r)
    (tmp_path / "empty").mkdir()
    r = invoke("report", tmp_path / "empty")
    assert r.exit_code == 2 and "not a run directory" in one_error_line(r)
    r = invoke("report", tmp_path / "empty", "--format", "xml")
    assert r.exit_code == 2 and "'xml' is not one of 'text', 'json'" in usage_error(r, "--format")


def test_sql_bad_format_is_a_usage_error_before_any_run_is_read(tmp_path):
    r = invoke("sql", "SELECT 1", tmp_path / "nope", "--format", "xml")
    assert r.exit_code == 2 and "'xml' is not one of 'table', 'csv', 'json'" in usage_error(r, "--format")


# --- sql -----------------------------------------------------------------------------------

def test_sql_table_csv_json_across_runs(runs):
    q = "SELECT run_id, count(*) AS n FROM steps GROUP BY 1 ORDER BY 1"
    r = invoke("sql", q, runs / "adam-a", runs / "sgd-b")
    assert r.exit_code == 0, r.output
    assert "adam-a" in r.stdout and "sgd-b" in r.stdout and "(2 rows)" in r.stdout
    r = invoke("sql", q, runs, "--format", "csv")
    assert r.stdout.splitlines() == ["run_id,n", "adam-a,300", "sgd-b,300", "sgd-c,300"]
    r = invoke("sql", "SELECT run_id, peak_loss, verdict FROM spikes ORDER BY run_id, spike_id",
               runs, "--format", "json")
    got = json.loads(r.stdout)
    assert len(got) == 5 and got[0]["run_id"] == "adam-a" and got[-1]["verdict"] is None


@pytest.mark.parametrize("statement, words", [
    ("DELETE FROM steps", "read-only: DELETE"),
    ("COPY (SELECT 1) TO 'x.csv'", "read-only: COPY"),
    ("SELECT 1; DROP VIEW steps", "one statement"),
    ("SELECT nope FROM steps", "SQL failed"),
    ("SELEKT 1", "SQL does not parse"),
])
def test_sql_errors_are_one_line_and_exit_2(runs, statement, words):
    r = invoke("sql", statement, runs)
    assert r.exit_code == 2
    assert words in one_error_line(r)


# --- analyze -------------------------------------------------------------------------------

def test_analyze_usage_errors(runs, tmp_path):
    r = invoke("analyze", runs, "--mechanisms", "sharpnes")
    assert r.exit_code == 2 and "unknown mechanism(s) sharpnes" in one_error_line(r)
    r = invoke("analyze", tmp_path / "nope")
    assert r.exit_code == 2 and "no such file" in one_error_line(r)
    r = invoke("analyze", runs, "--device", "potato")
    assert r.exit_code == 2 and "potato" in one_error_line(r)


def test_whatif_no_run_is_a_usage_error_like_analyze(tmp_path):
    r = invoke("whatif", tmp_path / "nope", "--spike", "0")
    assert r.exit_code == 2 and "no such file" in one_error_line(r)
    (tmp_path / "empty").mkdir()
    r = invoke("whatif", tmp_path / "empty", "--spike", "0")
    assert r.exit_code == 2 and "not a run directory" in one_error_line(r)


def test_analyze_expands_folders_reports_progress_and_survives_a_broken_run(copy, monkeypatch):
    (copy / "sgd-b" / "run.json").write_text("{broken")
    calls = []

    class Result:
        def __init__(self, run_id):
            self.run_id, self.notes = run_id, ["model not rebuilt: test"]
            self.spikes = [type("S", (), {"verdict": "unexplained"})()]

    def fake(run, *, device=None, mechanisms=None, allow_import=False, progress=None):
        calls.append((run.run_id, mechanisms, allow_import))
        for i, engine in enumerate(("numerical", "curvature")):
            progress(0, engine, i, 2)
        return Result(run.run_id)

    monkeypatch.setattr("forensics.analyzer.pipeline.analyze", fake)
    r = invoke("analyze", copy, "--mechanisms", "sharpness, numerical", "--allow-import")
    assert r.exit_code == 3, r.output
    assert calls == [("adam-a", ("sharpness", "numerical"), True),
                     ("sgd-c", ("sharpness", "numerical"), True)]
    assert "adam-a: 1 spike(s) analyzed: unexplained" in r.stdout
    assert f"error: {copy / 'sgd-b'}" in r.stderr and "Traceback" not in r.output


# --- demo and app --------------------------------------------------------------------------

def test_demo_passes_options_to_make_all(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("forensics.demo.make_all",
                        lambda out, names=None, if_missing=False, log=print: seen.update(
                            out=Path(out), names=names, if_missing=if_missing))
    r = invoke("demo", tmp_path, "--only", "eos,catapult", "--only", "numerical", "--if-missing")
    assert r.exit_code == 0, r.output
    assert seen == {"out": tmp_path, "names": ["eos", "catapult", "numerical"], "if_missing": True}


def test_demo_unknown_name_is_a_usage_error(tmp_path):
    r = invoke("demo", tmp_path, "--only", "nope")
    assert r.exit_code == 2 and "unknown sample run(s) nope" in one_error_line(r)


def test_app_runs_streamlit_on_the_run_dir(monkeypatch, runs, tmp_path):
    script = tmp_path / "app.py"
    script.write_text("")
    monkeypatch.setattr(cli.queries, "find_app", lambda: script)
    seen = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: seen.append(cmd) or 0)
    monkeypatch.setattr(cli.queries.importlib.util, "find_spec", lambda name: object())
    r = invoke("app", runs, "--port", "8600")
    assert r.exit_code == 0, r.output
    assert seen[0][1:4] == ["-m", "streamlit", "run"] and seen[0][4] == str(script)
    assert seen[0][-2:] == ["--", str(runs.resolve())] and "8600" in seen[0]


def test_app_errors(monkeypatch, runs, tmp_path):
    r = invoke("app", tmp_path / "nope")
    assert r.exit_code == 2 and "no such file" in one_error_line(r)
    monkeypatch.setattr(cli.queries, "find_app", lambda: None)
    r = invoke("app", runs)
    assert r.exit_code == 2 and "app.py not found" in one_error_line(r)


def test_help_documents_the_exit_codes():
    for args in ([], ["report"], ["sql"], ["analyze"]):
        r = invoke(*args, "--help")
        assert r.exit_code == 0
        assert "Exit codes" in r.stdout and "2 = usage error" in r.stdout


def test_cli_sets_passive_openmp_waiting_unless_the_user_chose(monkeypatch):
    """`forensics` sets OMP_WAIT_POLICY=PASSIVE before torch loads (spinning threads on a shared CPU
    made products 7-12x slower, docs/analysis.md); a value the user set is kept."""
    import os

    import forensics.cli as cli

    monkeypatch.setattr(cli, "app", lambda: None)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cli.main()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cli.main()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
