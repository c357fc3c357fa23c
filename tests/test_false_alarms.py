"""The false-alarm counts the specs state (docs/analysis.md) are what the clean runs give:
no rule fires at a pseudo-spike on the shipped clean runs."""

from pathlib import Path

import pytest

from forensics.analyzer.false_alarms import pseudo_findings

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"
CLEAN = ("clean_gd", "clean_sgd", "adam_control", "large_batch")


@pytest.mark.skipif(not (SAMPLES / "clean_gd" / "run.json").is_file(), reason="no sample runs")
def test_no_rule_fires_at_pseudo_spikes_of_the_clean_runs():
    pseudo = [(name, step, f) for name in CLEAN
              for step, findings in pseudo_findings(SAMPLES / name) for f in findings]
    assert len({(n, s) for n, s, _ in pseudo}) == 6  # the count the specs state
    fired = [(n, s, f.rule, f.message) for n, s, f in pseudo if f.fired]
    assert not fired, fired
    judged = {f.rule for _, _, f in pseudo if f.status != "inconclusive"}
    assert {"numerical", "sharpness", "catapult", "optimizer_state_reset", "hyperparameter_jump",
            "short_batch"} <= judged
