"""The two transformer mechanisms: planted evidence, the recorded sample run and its control, their
rank over the curvature rules, and hints that read the run's hyperparameters."""

from pathlib import Path

import pytest

from forensics.analyzer.evidence import Evidence, Finding, SpikeContext
from forensics.analyzer.hints import Advice, render, run_settings
from forensics.analyzer.measure import METRICS
from forensics.analyzer.rules import SPECS
from forensics.analyzer.verdict import choose_verdict

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"
GROWTH, CONTROL = SAMPLES / "attention_logit_growth", SAMPLES / "attention_qk_norm"


def _ev(onset=200, **hparams):
    ctx = SpikeContext(run_id="r", spike_id=0, onset=onset, peak=onset, end=onset + 5, peak_loss=4.0,
                       baseline_loss=1.0, optimizer="adam", betas=(0.9, 0.95), eps=1e-8,
                       hparams=hparams)
    return Evidence(ctx, catalog=METRICS)


def _heads(ev, values: dict[int, tuple[float, float, float, float]]):
    """Per step: (head 0 logit, head 1 logit, head 0 entropy, head 1 entropy)."""
    for step, (a, b, ea, eb) in values.items():
        ev.add_many(step, "attention", {"attn_logit_max@blocks.0.h0": a, "attn_logit_max@blocks.0.h1": b,
                                        "attn_entropy@blocks.0.h0": ea, "attn_entropy@blocks.0.h1": eb,
                                        "attn_logit_max": max(a, b), "attn_entropy_min": min(ea, eb)})


def test_attention_logit_growth_fires_on_a_planted_growing_head_and_names_it():
    ev = _ev(qk_norm=False)
    _heads(ev, {100: (3.0, 4.0, 1.5, 1.4), 150: (4.0, 40.0, 1.5, 0.6), 199: (5.0, 600.0, 1.5, 0.02)})
    f = SPECS["attention_logit_growth"].run(ev)
    assert f.fired and f.evidence["layer"] == "blocks.0" and f.evidence["head"] == 1
    assert f.evidence["growth"] == pytest.approx(150.0) and f.evidence["entropy_onset"] == 0.02
    assert "layer blocks.0 head 1" in f.message and "×150" in f.message
    assert "qk-layernorm on" in f.hint


@pytest.mark.parametrize("values, why", [
    ({100: (3.0, 20.0, 1.5, 1.0), 199: (5.0, 40.0, 1.5, 0.9)}, "below 50"),  # grew, but a healthy level
    ({100: (3.0, 300.0, 1.5, 0.1), 199: (5.0, 400.0, 1.5, 0.1)}, "growth under"),  # large but not growing
    ({199: (5.0, 400.0, 1.5, 0.1)}, "single measurement"),
])
def test_attention_logit_growth_stays_silent_without_growth_to_a_high_level(values, why):
    ev = _ev()
    _heads(ev, values)
    f = SPECS["attention_logit_growth"].run(ev)
    assert f.status == "not_fired" and why in f.message and not f.hint


def test_attention_logit_growth_is_inconclusive_without_attention():
    ev = _ev()
    ev.skip("attention", "no attention seen in the model's forward pass")
    f = SPECS["attention_logit_growth"].run(ev)
    assert f.status == "inconclusive" and "no attention seen" in f.reason


def _logits(ev, values: dict[int, tuple[float, float, float]], recorded=False):
    """Per step: (log Z mean, max logit, mean logit)."""
    for step, (z, mx, mean) in values.items():
        if recorded:
            ev.add_many(step, "logits", {"log_z_recorded": z, "logit_max_recorded": mx})
        else:
            ev.add_many(step, "logits", {"log_z_mean": z, "logit_max": mx, "logit_mean": mean})


def test_output_logit_divergence_fires_on_a_planted_drift_and_advises_the_z_loss():
    # planted, not reproduced: no natural output-logit divergence was found (docs/analysis.md)
    ev = _ev(z_loss=0.0, weight_decay=0.1)
    _logits(ev, {100: (2.0, 5.0, -3.0), 150: (-12.0, -8.0, -25.0), 199: (-30.0, -20.0, -60.0)})
    f = SPECS["output_logit_divergence"].run(ev)
    assert f.fired and f.evidence["log_z_shift"] == pytest.approx(-32.0)
    assert "log Z 2 at step 100 → -30 at step 199" in f.message
    assert "z-loss (weight from 0 to 0.0001" in f.hint and "weight decay" not in f.hint  # wd is 0.1


@pytest.mark.parametrize("values", [
    {100: (20.0, 30.0, 5.0), 199: (60.0, 70.0, 10.0)},  # log Z drifted up, the logits did not sink
    {100: (-25.0, -10.0, -40.0), 199: (-28.0, -12.0, -45.0)},  # far from 0 but not moving
    {100: (2.0, 5.0, -3.0), 199: (-5.0, -1.0, -25.0)},  # moving, still near 0
])
def test_output_logit_divergence_stays_silent_on_drift_alone(values):
    ev = _ev()
    _logits(ev, values)
    assert SPECS["output_logit_divergence"].run(ev).status == "not_fired"


def test_output_logit_divergence_prefers_the_recorded_columns():
    ev = _ev()
    _logits(ev, {190: (1.0, 3.0, -2.0), 195: (1.5, 3.0, -2.0)})  # two replays: quiet
    _logits(ev, {60: (1.0, 3.0, 0.0), 199: (-40.0, -20.0, 0.0)}, recorded=True)
    ev.add(199, "logits", "logit_mean", -50.0)
    f = SPECS["output_logit_divergence"].run(ev)
    assert f.fired and f.evidence["log_z_first_step"] == 60


def test_transformer_rules_outrank_the_curvature_rules():
    ev = _ev()
    for curvature in ("adam_beta2_lag", "sharpness", "catapult"):
        for rule in ("attention_logit_growth", "output_logit_divergence"):
            assert SPECS[rule].precedence < SPECS[curvature].precedence
            findings = [Finding(curvature, "fired", 1.0, "c"), Finding(rule, "fired", 0.6, "t")]
            assert choose_verdict(findings, ev)[0] == rule


def test_hints_never_advise_the_value_the_run_already_uses():
    spec = SPECS["adam_beta2_lag"]
    at_095 = spec.advise({"beta2": 0.95, "eps": 1e-8})
    assert "0.95" not in at_095 and "β₂" not in at_095 and "raise ε from 1e-08 to 1e-05" in at_095
    assert "lower β₂ from 0.999 to 0.95" in spec.advise({"beta2": 0.999, "eps": 1e-8})
    assert "lower β₂ (0.95 is usual)" in spec.advise({})  # unknown: the usual value, said as such
    assert "ε" not in spec.advise({"beta2": 0.999, "eps": 1e-3})  # ε already caps 1/P
    qk = SPECS["attention_logit_growth"]
    assert "qk-layernorm" in qk.advise({"qk_norm": False}) and "qk" not in qk.advise({"qk_norm": True})
    z = SPECS["output_logit_divergence"]
    assert "z-loss" in z.advise({"z_loss": 0.0}) and "z-loss" not in z.advise({"z_loss": 1e-4})
    assert render(("a", Advice("lr", lambda v: None, "x {to}"), "b"), {"lr": 1.0}) == "a; b"


def test_every_text_hint_that_names_a_setting_value_is_an_advice():
    """A hint naming a hyperparameter's value must read the run's (one mechanism for all rules)."""
    import re

    value = re.compile(r"(β₂|β₁|beta|ε|eps|weight decay|lr)\s*(\(e\.g\.|=|to)\s*[0-9]")
    for name, spec in SPECS.items():
        texts = [spec.hint] if isinstance(spec.hint, str) else [p for p in spec.hint if isinstance(p, str)]
        for text in texts:
            assert not value.search(text), f"{name}: '{text}' names a value; make it an Advice"


def test_run_settings_read_run_json():
    manifest = {"optimizer": {"class": "torch.optim.adamw.AdamW", "param_groups": [
        {"lr": 0.4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0}]},
        "model": {"factory": "forensics.zoo.gpt:gpt", "kwargs": {"qk_norm": True}},
        "loss": "forensics.zoo.gpt:next_token_z_loss"}
    assert run_settings(manifest) == {"lr": 0.4, "eps": 1e-8, "weight_decay": 0.0, "beta1": 0.9,
                                      "beta2": 0.95, "qk_norm": True, "attention": "sdpa",
                                      "z_loss": 1e-4}
    assert run_settings({}) == {}


@pytest.mark.skipif(not (GROWTH / "run.json").is_file(), reason="no sample runs")
def test_the_growth_run_is_attention_logit_growth_and_its_hints_read_beta2():
    from forensics.analyzer.pipeline import analyze

    mechanisms = ["attention_logit_growth", "output_logit_divergence", "adam_beta2_lag"]
    result = analyze(GROWTH, mechanisms=mechanisms, write=False)
    assert [s.context.onset for s in result.spikes] == [326]
    growth = result.spikes[0]
    assert growth.verdict == "attention_logit_growth"  # over adam_beta2_lag, which fires too
    f = {x.rule: x for x in growth.findings}
    assert f["adam_beta2_lag"].fired  # the curvature limit is crossed too; the attention explains it
    found = f["attention_logit_growth"].evidence
    assert found["layer"] == "blocks.0" and found["logit_onset"] > 1000
    assert found["entropy_onset"] < 0.1 and found["growth_per_step"] > 100
    assert f["output_logit_divergence"].status == "not_fired"
    ev = growth.evidence  # the per-step column (training pass) is what the replay measures
    steps, recorded = ev.series("attn_logit_max_recorded")
    assert steps.size > 200
    replayed = dict(zip(*ev.series("attn_logit_max"), strict=True))
    both = [s for s in replayed if (steps == s).any()]
    assert len(both) >= 6
    for step in both:
        assert recorded[steps == step][0] == pytest.approx(replayed[step], rel=1e-4), step
    for spike in result.spikes:  # the run's β₂ is 0.95: no hint says to lower it to 0.95
        for x in spike.findings:
            assert "0.95" not in x.hint


@pytest.mark.skipif(not (CONTROL / "run.json").is_file(), reason="no sample runs")
def test_the_qk_norm_control_has_no_spike_and_no_false_alarm():
    from forensics.analyzer.false_alarms import pseudo_findings
    from forensics.analyzer.pipeline import analyze
    from forensics.rundir.reader import open_run

    run = open_run(CONTROL)
    assert run.spikes == []
    assert analyze(CONTROL, write=False).spikes == []  # the offline re-detection finds none either
    pseudo = pseudo_findings(CONTROL)
    assert len(pseudo) == 7
    for _, findings in pseudo:
        f = {x.rule: x for x in findings}
        for rule in ("attention_logit_growth", "output_logit_divergence"):
            assert f[rule].status == "not_fired", f[rule].message


def test_default_counterfactuals_leave_out_a_value_the_run_already_uses():
    from forensics.whatif.defaults import already_used

    assert already_used("beta2=0.95", {"beta2": 0.95})
    assert not already_used("beta2=0.95", {"beta2": 0.999})
    assert not already_used("beta2=0.95", {})  # unknown: replay it
    assert not already_used("eps=x1000", {"eps": 1e-8}) and not already_used("skip_batch=3", {})
    assert not already_used("lr=hold+clip=0.1", {"lr": 0.1})
    assert already_used("weight_decay=0.1+beta2=0.95", {"weight_decay": 0.1, "beta2": 0.95})


@pytest.mark.skipif(not (GROWTH / "run.json").is_file(), reason="no sample runs")
def test_the_spike_page_draws_the_attention_heat_map_and_log_z(monkeypatch):
    """The two rules' panels (their SPECs) draw from the growth run's measurements: a heat map of
    max |q·kᵀ/√d| per step × layer.head, and log Z with the output logits."""
    pytest.importorskip("streamlit")
    import pandas as pd

    from forensics.analyzer.pipeline import analyze
    from forensics.app import panels

    spike = analyze(GROWTH, mechanisms=["attention_logit_growth", "output_logit_divergence"],
                    write=False).spikes[0]
    c = spike.context
    m = pd.DataFrame(spike.evidence.rows, columns=["step", "engine", "metric", "value"])
    frames = panels.SpikeFrames(root="", run={"path": ""}, m=m, steps=pd.DataFrame({"step": []}),
                                spike={"onset_step": c.onset, "peak_step": c.peak, "end_step": c.end},
                                snaps=pd.DataFrame({"step": []}))
    for rule in ("attention_logit_growth", "output_logit_divergence"):
        drawn = []
        monkeypatch.setattr(panels.ui, "show_chart", lambda chart, drawn=drawn, **kw: drawn.append(chart))
        panels.draw_finding(rule, frames)
        assert drawn, rule
        spec = drawn[0].to_dict()
        assert spec.get("data") or spec.get("datasets"), rule
