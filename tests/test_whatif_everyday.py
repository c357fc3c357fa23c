"""Counterfactual replay of the everyday causes (recipes of tests/test_everyday_rules_planted.py,
recorded without a model factory, so the live model is passed): an lr jump from a rebuilt
scheduler is gone with the lr held at its value before the jump, an Adam state cleared mid-run
is gone with the optimizer state restored."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_everyday_rules_planted import mlp, regression, train  # noqa: E402

from forensics.record.recorder import Recorder  # noqa: E402
from forensics.rundir.reader import open_run  # noqa: E402
from forensics.whatif import TOLERANCE, whatif  # noqa: E402


def _spike_after(run, k, within):
    return next(s for s in run.spikes if k <= s.onset <= k + within)


def test_lr_jump_is_gone_with_the_lr_held(tmp_path):
    k = 200

    def schedule(step):  # cosine 1 -> 0.04 over k steps, then a rebuilt schedule ×25
        return 1.0 if step >= k else 0.04 + 0.96 * 0.5 * (1 + math.cos(math.pi * step / k))

    model = mlp(64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    with Recorder(model, opt, tmp_path / "run", loss="mse") as rec:
        train(model, opt, regression(k + 100), rec, sched=sched)
    run = open_run(tmp_path / "run")
    spike = _spike_after(run, k, 50)
    result = whatif(run, spike.spike_id, ["lr=hold"], model=mlp(64))
    assert result.reproduced and result.replay_error <= TOLERANCE, result.diagnosis
    assert result.steps[0] < k  # the window starts before the jump: hold keeps the lr before it
    (held,) = result.changes
    assert held.recorded_peak_ratio > 10 and held.spike_gone


def test_cleared_adam_state_is_gone_with_the_state_restored(tmp_path):
    k = 300
    model = mlp(256)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with Recorder(model, opt, tmp_path / "run", loss="mse") as rec:
        train(model, opt, regression(k + 60), rec, before_step=lambda t: t == k and opt.state.clear())
    run = open_run(tmp_path / "run")
    spike = _spike_after(run, k, 12)
    result = whatif(run, spike.spike_id, ["restore_optimizer"], model=mlp(256))
    assert result.reproduced and result.replay_error <= TOLERANCE, result.diagnosis
    (restored,) = result.changes
    assert restored.recorded_peak_ratio > 10 and restored.spike_gone


def test_the_default_fix_of_a_jump_sets_the_value_before_it_even_when_the_window_starts_after(tmp_path):
    """sample_runs/lr_jump: the scheduler is rebuilt at step 300 (lr 0.004 -> 0.1) and the replay
    window starts after it, so `lr=hold` would replay 0.1: the default is the lr before the jump."""
    import shutil

    import pytest

    from forensics.analyzer.pipeline import analyze
    from forensics.whatif.defaults import default_changes

    sample = Path(__file__).resolve().parents[1] / "sample_runs" / "lr_jump"
    if not (sample / "run.json").is_file():
        pytest.skip("sample_runs/ not recorded")
    shutil.copytree(sample, tmp_path / "run", ignore=shutil.ignore_patterns("analysis"))
    assert analyze(tmp_path / "run").spikes[0].verdict == "hyperparameter_jump"
    run = open_run(tmp_path / "run")
    (text,), rules = default_changes(run, run.spikes[0])
    assert rules == ["hyperparameter_jump"] and text.startswith("lr=0.004")
    result = whatif(run, 0)
    assert result.reproduced and result.steps[0] > 300  # the window holds no step before the jump
    (fix,) = result.changes
    assert fix.spike_gone and fix.recorded_peak_ratio > 5
