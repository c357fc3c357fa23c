"""The four everyday sample runs (forensics/demo/everyday.py) get the verdicts they were planted for,
with the planted numbers: optimizer_reset (Adam's state cleared at 500), lr_jump (LambdaLR rebuilt at
300: lr 0.004 → 0.1), fp16_overflow (float16 autocast, inputs ×1e6 at 200, GradScaler found without
`scaler=`), short_batch (3 of 32 samples at the end of each 13-step epoch)."""


import numpy as np
import pytest
from _sample_runs import SAMPLES, analyze_copy, finding, recorded

from forensics.demo import everyday
from forensics.rundir.reader import open_run

NAMES = ("optimizer_reset", "lr_jump", "fp16_overflow", "short_batch")
pytestmark = recorded(NAMES)


def test_sizes_stay_small():
    for name in NAMES:
        size = sum(p.stat().st_size for p in (SAMPLES / name).rglob("*") if p.is_file())
        assert size < 500_000, (name, size)


def test_optimizer_reset(tmp_path):
    result = analyze_copy("optimizer_reset", tmp_path)
    assert [s.context.onset for s in result.spikes] == [everyday.RESET + 1]
    spike = result.spikes[0]
    assert spike.verdict == "optimizer_state_reset", spike.verdict_message
    f = finding(spike, "optimizer_state_reset")
    assert f.evidence["reset_step"] == everyday.RESET
    assert (f.evidence["counter_before"], f.evidence["counter_after"]) == (everyday.RESET, 1)
    assert f.evidence["update_norm_jump"] > 10
    assert f"optimizer state reset at step {everyday.RESET}" in f.message


def test_lr_jump(tmp_path):
    result = analyze_copy("lr_jump", tmp_path)
    assert len(result.spikes) == 1
    spike = result.spikes[0]
    assert everyday.JUMP < spike.context.onset <= everyday.JUMP + 10
    assert spike.verdict == "hyperparameter_jump", spike.verdict_message
    f = finding(spike, "hyperparameter_jump")
    got = (f.evidence["step"], f.evidence["hparam"], f.evidence["source"])
    assert got == (everyday.JUMP, "lr", "schedule")
    assert f.evidence["old"] == pytest.approx(0.1 * everyday._cosine(everyday.JUMP - 1))
    assert f.evidence["new"] == pytest.approx(0.1)
    assert f"learning rate jumped ×25 at step {everyday.JUMP} (schedule, 0.004 → 0.1)" in f.message


def test_fp16_overflow(tmp_path):
    run = open_run(SAMPLES / "fp16_overflow")
    rows = run.steps.to_pylist()
    assert [r["step"] for r in rows] == list(range(everyday.OVERFLOW + 60))  # skipped steps are rows too
    skipped = [r["step"] for r in rows if r["amp_skipped"]]
    assert everyday.OVERFLOW in skipped and skipped[0] == 0  # the scaler's calibration comes first
    result = analyze_copy("fp16_overflow", tmp_path)
    spike = next(s for s in result.spikes if s.context.onset == everyday.OVERFLOW)
    assert spike.verdict == "numerical", spike.verdict_message
    f = finding(spike, "numerical")
    fp16 = f.evidence["fp16_overflow"]
    assert (fp16["module"], fp16["step"], fp16["output_layer"]) == ("0", everyday.OVERFLOW, False)
    assert fp16["value"] > 65504 and fp16["scale_at_floor"] is False
    assert f.evidence["first_step"] == everyday.OVERFLOW
    assert "calibration skip" in f.message
    assert "float16 overflow in the activations of module `0`" in f.message


def test_short_batch(tmp_path):
    run = open_run(SAMPLES / "short_batch")
    steps = np.array(run.steps.column("step").to_pylist())
    rows = np.array(run.steps.column("batch_rows").to_pylist())
    short = steps[rows == 3].tolist()
    assert short == list(range(12, 13 * everyday.SHORT["epochs"], 13))
    result = analyze_copy("short_batch", tmp_path)
    assert len(result.spikes) >= 5
    for spike in result.spikes:
        assert spike.context.onset in short, spike.context.onset
        assert spike.verdict == "short_batch", spike.verdict_message
        f = finding(spike, "short_batch")
        assert (f.evidence["batch_rows"], f.evidence["usual"], f.evidence["period"]) == (3, 32, 13)
        assert f.evidence["short_batches"] == everyday.SHORT["epochs"]


def test_a_rebuild_reproduces_the_recorded_steps(tmp_path):
    everyday.train_fp16_overflow(tmp_path)
    a = open_run(SAMPLES / "fp16_overflow").steps
    b = open_run(tmp_path / "fp16_overflow").steps
    for column in ("loss", "loss_scale", "lr"):  # NaN payloads compare equal here
        np.testing.assert_array_equal(np.array(a.column(column).to_pylist(), dtype=float),
                                      np.array(b.column(column).to_pylist(), dtype=float), err_msg=column)
    for column in ("amp_skipped", "param_groups", "batch_rows"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist(), column


@pytest.mark.parametrize("name, rule, charts", [("optimizer_reset", "optimizer_state_reset", 3),
                                                ("lr_jump", "hyperparameter_jump", 1),
                                                ("fp16_overflow", "numerical", 3),
                                                ("short_batch", "short_batch", 1)])
def test_the_spike_page_draws_each_rules_charts(tmp_path, monkeypatch, name, rule, charts):
    """The rule's panel (its SPEC) draws from the spike's measurements: the update norm against its
    running median, the lr, the loss scale and the skipped steps, the batch sizes."""
    pytest.importorskip("streamlit")
    import pandas as pd

    from forensics.app import panels

    spike = analyze_copy(name, tmp_path).spikes[0]
    drawn = []
    monkeypatch.setattr(panels.ui, "show_chart", lambda chart, **kw: drawn.append(chart))
    c = spike.context
    m = pd.DataFrame(spike.evidence.rows, columns=["step", "engine", "metric", "value"])
    frames = panels.SpikeFrames(root="", run={"path": ""}, m=m, steps=pd.DataFrame({"step": []}),
                                spike={"onset_step": c.onset, "peak_step": c.peak, "end_step": c.end},
                                snaps=pd.DataFrame({"step": []}))
    panels.draw_finding(rule, frames)
    assert len(drawn) == charts
