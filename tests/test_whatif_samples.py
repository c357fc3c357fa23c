"""Counterfactual replay on every sample run with a spike: the no-change replay reproduces the
recorded losses and weights (CPU, tolerance forensics.whatif.TOLERANCE = 1e-4 relative), and
the literature fix for the verdict removes the spike; where it does not, the result says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forensics.cli import app
from forensics.whatif import TOLERANCE, whatif

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"

# (run, spike, verdict's literature fix that must remove the spike, a change that must not)
FIXES = [
    # β₂ lag: larger ε; β₂ = 0.95 from 3 steps before the onset is too late
    ("adam_beta2_lag", 0, "eps=x1000", "beta2=0.95"),
    ("bad_batch", 0, "skip_batch=400", "lr=x0.5"),      # data: skip the batch
    ("catapult", 0, "lr=x0.5", None),                   # catapult: lower lr
    ("eos", 0, "lr=x0.5", "clip=1.0"),                  # sharpness: lower lr; clipping at 1 only damps it
    ("low_frequency", 0, "lr=x0.5", None),              # sharpness: lower lr
    ("numerical", 0, "lr=x0.1", "clip=0.1"),            # lr range test left running: lower lr
]


@pytest.mark.parametrize("name, spike, fix, not_fix", FIXES)
def test_replay_reproduces_and_fix_removes_spike(name, spike, fix, not_fix):
    changes = [fix] + ([not_fix] if not_fix else [])
    result = whatif(SAMPLES / name, spike, changes)
    assert result.reproduced and result.replay_error <= TOLERANCE, result.diagnosis
    assert result.spike_visible
    fixed = result.changes[0]
    assert fixed.recorded_peak_ratio > 4  # the recorded spike, on the same curve and baseline
    assert fixed.spike_gone and fixed.peak_ratio < 1.5 and fixed.recover_steps == 0
    if not_fix:
        other = result.changes[1]
        assert not other.spike_gone and other.peak_ratio >= 1.5


def test_small_batch_spike_is_not_visible_and_no_fix_is_claimed():
    """The detector watched a probe batch that the recording does not hold; the window's five
    batches of five points do not show the spike, so whatif claims nothing (documented)."""
    for spike in (0, 1):
        result = whatif(SAMPLES / "small_batch", spike, ["lr=x0.5"])
        assert result.reproduced and result.replay_error <= TOLERANCE
        assert not result.spike_visible and not result.changes[0].spike_gone
        assert any("not visible" in n for n in result.notes)


def test_spike_without_snapshots_is_a_usage_error():
    with pytest.raises(ValueError, match="spike 5 has no snapshots"):
        whatif(SAMPLES / "small_batch", 5, ["lr=x0.5"])


@pytest.fixture
def analyzed(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    for name in ("bad_batch", "eos"):
        shutil.copytree(SAMPLES / name, out / name)
    assert CliRunner().invoke(app, ["analyze", str(out), "--device", "cpu"]).exit_code == 0
    return out


def test_cli_json_defaults_to_fired_rules_hints_and_stores(analyzed):
    res = CliRunner().invoke(app, ["whatif", str(analyzed / "bad_batch"), "--spike", "0", "--format", "json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert {"run", "spike_id", "reproduced", "replay_error", "changes"} <= set(obj)
    assert obj["reproduced"] is True
    (change,) = obj["changes"]  # the data rule's hint: skip the onset batch
    assert change["change"] == "skip_batch=400" and change["rule"] == "data" and change["spike_gone"] is True
    keys = {"change", "peak_ratio", "recorded_peak_ratio", "spike_gone", "recover_steps", "losses"}
    assert keys <= set(change)
    from forensics.whatif import store

    rows = store.load(analyzed / "bad_batch", 0)
    assert [r["change"] for r in rows] == ["none", "skip_batch=400"]
    assert rows[1]["spike_gone"] is True and rows[1]["steps"][0] == 395


def test_cli_text_and_report_line(analyzed):
    res = CliRunner().invoke(app, ["whatif", str(analyzed / "eos"), "--spike", "0", "--change", "lr=x0.5"])
    assert res.exit_code == 0, res.output
    assert "with lr ×0.5 the spike does not occur: peak ×0.939 instead of ×15.1" in res.stdout
    rep = CliRunner().invoke(app, ["report", str(analyzed / "eos")])
    line = next(x for x in rep.stdout.splitlines() if "what if" in x)
    assert line.split()[:4] == ["eos:127", "what", "if", "replayed"]
    assert line.endswith("with lr ×0.5 the spike does not occur: peak ×0.939 instead of ×15.1")


@pytest.mark.parametrize("args, message", [
    (["--change", "beta2=0.95"], "no 'betas'"),
    (["--change", "warmup=10"], "unknown change"),
    (["--spike", "9"], "no spike 9"),
    (["--format", "xml"], "--format"),
])
def test_cli_usage_errors_exit_2(analyzed, args, message):
    argv = ["whatif", str(analyzed / "eos")] + (["--spike", "0"] if "--spike" not in args else []) + args
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2 and message in res.output, res.output


def test_cli_not_reproduced_exits_3(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_whatif import _data, _record

    _record(tmp_path / "run", _data(), clip=0.5, report_clip=None)
    res = CliRunner().invoke(app, ["whatif", str(tmp_path / "run"), "--spike", "0", "--change", "lr=x0.5",
                                   "--format", "json"])
    assert res.exit_code == 3
    obj = json.loads(res.stdout)
    assert obj["reproduced"] is False and obj["changes"] == [] and "does not reproduce" in obj["diagnosis"]
