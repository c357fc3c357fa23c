"""The GPT sample runs get the verdicts they were planted for, and their controls stay quiet:
gpt_bad_batch (random tokens at step 260: `data`), gpt_beta2_lag (full-batch Adam at very low loss:
`adam_beta2_lag`), gpt_control and gpt_beta2_control (no spike, nothing to judge). The physics of
each mechanism is checked without the analyzer in tests/test_sample_runs_physics.py."""

import json

import pytest
from _sample_runs import SAMPLES, analyze_copy, finding, recorded

from forensics.demo import gpt, gpt_lag

NAMES = ("gpt_bad_batch", "gpt_control", "gpt_beta2_lag", "gpt_beta2_control")
pytestmark = recorded(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_sizes_stay_under_one_and_a_half_megabytes(name):
    size = sum(p.stat().st_size for p in (SAMPLES / name).rglob("*") if p.is_file())
    assert size < 1_500_000, (name, size)


def test_gpt_bad_batch_is_the_planted_batch(tmp_path):
    result = analyze_copy("gpt_bad_batch", tmp_path)
    assert [(s.context.onset, s.verdict) for s in result.spikes] == [(gpt.BAD_STEP, "data")]
    assert finding(result.spikes[0], "data").evidence["ratio"] > 5


def test_gpt_beta2_lag_is_adam_beta2_lag_crossing_the_limit_before_onset(tmp_path):
    result = analyze_copy("gpt_beta2_lag", tmp_path)
    assert len(result.spikes) == 1
    spike = result.spikes[0]
    assert spike.verdict == "adam_beta2_lag", spike.verdict_message
    ev = finding(spike, "adam_beta2_lag").evidence
    onset = spike.context.onset
    assert ev["crossed_at_step"] < onset                      # past 38/eta before the loss left
    assert ev["separates_from_quiet"] and ev["eta_pre_lambda_max_quiet"] < 0.95 * ev["limit"]
    assert ev["ratio_median_pre"] < 0.1 and ev["eps_dominated_share"] < 0.5  # the lag, not eps
    for rule in ("data", "hyperparameter_jump", "numerical", "optimizer_state_reset",
                 "attention_logit_growth", "output_logit_divergence"):
        assert finding(spike, rule).status == "not_fired", rule
    task = json.loads((SAMPLES / "gpt_beta2_lag" / "run.json").read_text())["task"]
    assert task["mechanism"] == "adam_beta2_lag"


@pytest.mark.parametrize("name", ["gpt_control", "gpt_beta2_control"])
def test_gpt_controls_have_no_spike_to_judge(name, tmp_path):
    assert analyze_copy(name, tmp_path).spikes == []


def test_gpt_beta2_control_differs_from_the_lag_run_in_eps_only():
    assert set(gpt_lag.EPS) == {"gpt_beta2_lag", "gpt_beta2_control"}
    runs = {n: json.loads((SAMPLES / n / "run.json").read_text()) for n in gpt_lag.EPS}
    lag, ctl = (runs[n]["optimizer"]["param_groups"][0] for n in ("gpt_beta2_lag", "gpt_beta2_control"))
    assert {k for k in lag if lag[k] != ctl.get(k)} == {"eps"}
    assert (lag["eps"], ctl["eps"]) == (gpt_lag.EPS["gpt_beta2_lag"], gpt_lag.EPS["gpt_beta2_control"])
    assert runs["gpt_beta2_lag"]["model"] == runs["gpt_beta2_control"]["model"]
