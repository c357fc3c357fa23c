"""The CLI and the catalog on the recorded sample runs: the real recorder's files, the real analyzer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import forensics.cli as cli
from forensics.catalog.views import VIEW_NAMES, connect, query

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"
pytestmark = pytest.mark.skipif(not (SAMPLES / "numerical" / "run.json").is_file(),
                                reason="sample_runs/ not recorded (forensics demo)")
runner = CliRunner()


def test_catalog_opens_every_sample_run_without_skipping():
    cat = connect(SAMPLES)
    names = {r.run_id for r in cat.runs}
    assert {"numerical", "eos", "clean_gd"} <= names
    assert not cat.skipped and not cat.not_runs
    for view in VIEW_NAMES:
        query(cat, f"SELECT * FROM {view} LIMIT 5")
    runs = {r["run_id"]: r for r in query(cat, "SELECT * FROM runs").to_pylist()}
    assert runs["clean_gd"]["num_spikes"] == 0 and runs["numerical"]["num_spikes"] >= 1
    assert runs["numerical"]["num_steps"] > 0 and runs["numerical"]["num_snapshots"] > 0
    snaps = query(cat, "SELECT path FROM snapshots WHERE run_id = 'numerical'").to_pylist()
    assert all(Path(s["path"]).is_file() for s in snaps)


def test_analyze_then_report_a_copy_of_two_sample_runs(tmp_path):
    for name in ("numerical", "clean_gd"):
        shutil.copytree(SAMPLES / name, tmp_path / name, ignore=shutil.ignore_patterns("analysis"))
    r = runner.invoke(cli.app, ["analyze", str(tmp_path), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "numerical: 1 spike(s) analyzed: numerical" in r.stdout
    r = runner.invoke(cli.app, ["report", str(tmp_path), "--format", "json"])
    assert r.exit_code == 1, r.output
    spikes = json.loads(r.stdout)
    assert [(s["run"], s["verdict"]) for s in spikes] == [("numerical", "numerical")]
    primary = [f for f in spikes[0]["findings"] if f["primary"]]
    assert primary[0]["mechanism"] == "numerical" and primary[0]["evidence"]
    r = runner.invoke(cli.app, ["report", str(tmp_path / "clean_gd")])
    assert r.exit_code == 0 and "clean_gd: no spikes" in r.stdout
    r = runner.invoke(cli.app, ["sql", "SELECT count(*) AS n FROM measurements WHERE engine = 'numerical'",
                                str(tmp_path), "--format", "csv"])
    assert r.exit_code == 0 and int(r.stdout.splitlines()[1]) > 0
