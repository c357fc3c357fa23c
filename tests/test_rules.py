"""Known-answer tests of the rules and the verdict on hand-built evidence.

Every rule is judged as the pipeline judges it: through `SPEC.run`, on a strict `Evidence`
(the engines' declared metrics as its catalog), so a rule that reads a metric none of its
engines declares fails here.
"""

import math

import pytest

from forensics.analyzer.evidence import Evidence as _Evidence
from forensics.analyzer.evidence import Finding, SpikeContext, UndeclaredMetric
from forensics.analyzer.measure import METRICS
from forensics.analyzer.rules import SPECS
from forensics.analyzer.verdict import choose_verdict


class _Rules:
    """RULES[name](ev): the rule's finding, judged through its spec's view."""

    def __getitem__(self, name):
        return SPECS[name].run


RULES = _Rules()


def ctx(**kw):
    base = dict(run_id="r", spike_id=0, onset=10, peak=12, end=16, peak_loss=5.0,
                baseline_loss=1.0, optimizer="sgd", momentum=0.0)
    base.update(kw)
    return SpikeContext(**base)


def Evidence(context):  # noqa: N802  (strict evidence, as the pipeline builds it)
    return _Evidence(context, catalog=METRICS)


def curvature(ev, steps, lrs, lams, losses):
    for s, lr, lam, loss in zip(steps, lrs, lams, losses):
        ev.add_many(s, "curvature", {"lr": lr, "lambda_max": lam, "eta_lambda_max": lr * lam,
                                     "loss": loss})


def test_sharpness_fires_on_progressive_sharpening_at_constant_lr():
    ev = Evidence(ctx())
    curvature(ev, [4, 6, 8, 9, 10, 18], [0.1] * 6, [15, 17, 19, 20.5, 21, 18],
              [1.0, 0.8, 0.6, 0.55, 0.6, 0.5])
    f = RULES["sharpness"](ev)
    assert f.status == "fired"
    assert f.evidence["llas"] is True
    assert f.evidence["eta_lambda_max"] == pytest.approx(2.1)
    assert f.thresholds["limit_momentum"] == 2.0


def test_sharpness_uses_the_momentum_limit():
    ev = Evidence(ctx(momentum=0.9))
    curvature(ev, [4, 8, 10], [0.1] * 3, [15, 19, 21], [1.0, 0.6, 0.6])
    f = RULES["sharpness"](ev)
    assert f.status == "not_fired"  # 2.1 < 2 + 2*0.9
    assert f.thresholds["limit_momentum"] == pytest.approx(3.8)


def test_sharpness_defers_to_catapult_when_the_lr_jumped():
    ev = Evidence(ctx())
    curvature(ev, [4, 8, 10], [0.05, 0.05, 0.15], [20, 20, 20], [1.0, 0.9, 0.9])
    f = RULES["sharpness"](ev)
    assert f.status == "not_fired" and f.evidence["lr_driven"] is True


def test_sharpness_is_inconclusive_for_adam_and_without_measurements():
    assert RULES["sharpness"](Evidence(ctx(optimizer="adam"))).status == "inconclusive"
    ev = Evidence(ctx())
    ev.skip("curvature", "model could not be rebuilt")
    f = RULES["sharpness"](ev)
    assert f.status == "inconclusive" and "rebuilt" in f.reason


def ntk(ev, step, lr_ratio, pl_top, pl_rest, lam, excess=None):
    ev.add_many(step, "ntk", {"lr_over_eta_crit": lr_ratio, "pl_top": pl_top, "pl_rest": pl_rest,
                              "ntk_loss": pl_top + pl_rest, "ntk_lambda_max": lam, "ntk_s": 5,
                              "eta_crit": 0.1 / lr_ratio, "excess_top_share": excess})


def test_catapult_fires_when_increase_is_in_top_space_and_kernel_drops():
    ev = Evidence(ctx())
    ntk(ev, 8, 1.5, 0.1, 0.2, 100.0)
    ntk(ev, 10, 1.5, 0.5, 0.21, 100.0)
    ntk(ev, 12, 1.4, 4.0, 0.25, 90.0, excess=0.97)
    ntk(ev, 20, 0.8, 0.05, 0.2, 60.0)
    f = RULES["catapult"](ev)
    assert f.status == "fired"
    assert f.evidence["top_share_of_excess"] == pytest.approx(0.97)
    assert f.evidence["kernel_ratio"] == pytest.approx(0.6)


def test_catapult_not_fired_below_critical_lr():
    ev = Evidence(ctx())
    ntk(ev, 8, 0.5, 0.1, 0.2, 100.0)
    ntk(ev, 12, 0.5, 0.2, 4.0, 100.0, excess=0.1)
    ntk(ev, 20, 0.5, 0.1, 0.2, 100.0)
    f = RULES["catapult"](ev)
    assert f.status == "not_fired" and "η ≤ η_crit" in f.message


def test_catapult_share_is_of_the_excess_energy_never_over_100_percent():
    """PL_s rose by 1.08× the loss increase (the rest fell): the old share read 108%; the
    share of the excess residual's energy is what is reported, in [0, 1]."""
    ev = Evidence(ctx())
    ntk(ev, 8, 1.5, 0.10, 0.50, 100.0)
    ntk(ev, 12, 1.4, 1.18, 0.40, 90.0, excess=0.8)
    ntk(ev, 20, 0.8, 0.05, 0.2, 60.0)
    f = RULES["catapult"](ev)
    assert f.evidence["pl_top_increase"] / f.evidence["loss_increase"] == pytest.approx(1.08 / 0.98)
    assert f.evidence["top_share_of_excess"] == pytest.approx(0.8)
    assert "80% of the excess residual" in f.message


def adam(ev, step, ratio, pre, direc, eps_share=0.0):
    ev.add_many(step, "adam", {"ratio_median": ratio, "eta_pre_lambda_max": pre,
                               "eta_pre_grad_curvature": direc, "eps_dominated_share": eps_share})


def test_adam_rule_fires_on_the_limit_for_beta1_0_9_and_names_it():
    """Known answer, β₁ = 0.9: limit (2+2·0.9)/(1−0.9) = 38; 0.95·38 = 36.1. Quiet step at 31,
    crossing at step 8 (37.0), onset 10."""
    ev = Evidence(ctx(optimizer="adam", betas=(0.9, 0.999)))
    adam(ev, 4, 0.001, 31.0, 0.5)
    adam(ev, 6, 0.01, 35.0, 20.0)
    adam(ev, 8, 0.02, 37.0, 30.0)
    adam(ev, 10, 0.03, 38.8, 38.6)
    f = RULES["adam_beta2_lag"](ev)
    assert f.status == "fired", f.message
    assert f.thresholds["limit_cohen"] == pytest.approx(38.0)
    assert f.evidence["crossed_at_step"] == 8 and f.evidence["separates_from_quiet"] is True
    assert "= 38 at β₁ = 0.9 (λ_max(P⁻¹H) < 38/η" in f.message and "first at step 8" in f.message
    assert "38/η at β₁" not in f.message  # η·λ_max (37.0) is compared with 38, not with 38/η
    assert "quiet step 4 sat below it" in f.message


def test_adam_rule_does_not_fire_past_2_over_eta_with_momentum():
    """With β₁ = 0.9, η·λ_max(P⁻¹H) = 3.6 is past 2/η but far below 38/η; a low g²/v̂ with it
    is no evidence (the old rule fired here)."""
    ev = Evidence(ctx(optimizer="adam", betas=(0.9, 0.999)))
    adam(ev, 6, 0.01, 3.0, 0.5)
    adam(ev, 8, 0.02, 3.5, 1.2)
    adam(ev, 10, 0.03, 3.6, 2.5)
    f = RULES["adam_beta2_lag"](ev)
    assert f.status == "not_fired"
    assert "a low g²/v̂ alone is not evidence" in f.message and "does not apply" in f.message


@pytest.mark.parametrize("beta1, value, fires", [(0.0, 2.5, True), (0.0, 1.5, False),
                                                 (0.5, 5.8, True), (0.5, 5.0, False)])
def test_adam_limit_follows_the_runs_beta1(beta1, value, fires):
    """(2+2β₁)/(1−β₁): 2 at β₁ = 0, 6 at β₁ = 0.5 (fires from 0.95× the limit)."""
    ev = Evidence(ctx(optimizer="adam", betas=(beta1, 0.999)))
    adam(ev, 8, 0.5, value, value)
    adam(ev, 10, 0.5, value, value)
    f = RULES["adam_beta2_lag"](ev)
    assert f.fired is fires, f.message
    assert f.thresholds["limit_cohen"] == pytest.approx((2 + 2 * beta1) / (1 - beta1))


def test_adam_never_claims_separation_against_a_nan_quiet_step():
    ev = Evidence(ctx(optimizer="adam", betas=(0.9, 0.999)))
    adam(ev, 4, 0.01, float("nan"), 0.5)
    adam(ev, 8, 0.01, 38.5, 38.0)
    adam(ev, 10, 0.01, 38.8, 38.6)
    f = RULES["adam_beta2_lag"](ev)
    assert f.fired and f.evidence["separates_from_quiet"] is False
    assert "no measured quiet step" in f.message and "separat" not in f.message


def test_adam_lag_inconclusive_when_eps_caps_the_preconditioner():
    ev = Evidence(ctx(optimizer="adam", betas=(0.9, 0.999)))
    adam(ev, 8, 0.01, 3.0, 1.0, eps_share=0.9)
    adam(ev, 10, 0.01, 3.0, 2.5, eps_share=0.9)
    assert RULES["adam_beta2_lag"](ev).status == "inconclusive"


def test_adam_rule_says_when_there_is_no_lag():
    ev = Evidence(ctx(optimizer="adam", betas=(0.9, 0.999)))
    adam(ev, 8, 0.9, 3.0, 1.0)
    adam(ev, 10, 1.1, 3.0, 2.5)
    f = RULES["adam_beta2_lag"](ev)
    assert f.status == "not_fired" and "a low g²/v̂" not in f.message
    ev = Evidence(ctx(optimizer="adam", betas=(0.9, 0.999)))
    adam(ev, 8, 0.9, 38.0, 1.0)
    adam(ev, 10, 1.1, 38.5, 2.5)
    f = RULES["adam_beta2_lag"](ev)
    assert f.fired and "no β₂ lag" in f.message and f.score < 0.8
    assert RULES["adam_beta2_lag"](Evidence(ctx(optimizer="other"))).status == "inconclusive"


def test_data_rule_threshold():
    ev = Evidence(ctx())
    ev.add_many(10, "data", {"batch_loss_ratio": 12.0, "batch_loss": 12.0,
                             "neighbor_loss_median": 1.0, "neighbor_count": 7})
    assert RULES["data"](ev).status == "fired"
    ev2 = Evidence(ctx())
    ev2.add_many(10, "data", {"batch_loss_ratio": 1.1})
    assert RULES["data"](ev2).status == "not_fired"
    assert RULES["data"](Evidence(ctx())).status == "inconclusive"


def test_numerical_names_the_first_nonfinite_tensor():
    ev = Evidence(ctx(nonfinite=True))
    ev.add_many(11, "numerical", {"nonfinite_loss": 0, "nonfinite_grad": 3})
    ev.add_many(12, "numerical", {"nonfinite_loss": 1, "nonfinite_grad": 10})
    f = RULES["numerical"](ev)
    assert f.status == "fired"
    assert f.evidence["first_kind"] == "grad" and f.evidence["first_step"] == 11


def test_low_frequency_and_condensation():
    ev = Evidence(ctx())
    ev.add_many(12, "frequency", {"low_share_excess": 0.8, "low_share_descent": 0.7})
    assert RULES["low_frequency"](ev).status == "fired"
    ev.add_many(8, "condensation", {"condensation_share": 0.1, "condensation_index": 0.2})
    ev.add_many(20, "condensation", {"condensation_share": 0.3, "condensation_index": 0.4})
    f = RULES["condensation"](ev)
    assert f.status == "fired" and f.evidence["share_after"] == 0.3


def test_verdict_precedence():
    ev = Evidence(ctx(nonfinite=True))
    curvature(ev, [4, 8, 10], [0.1] * 3, [15, 19, 21], [1.0, 0.6, 0.6])
    ev.add_many(10, "numerical", {"nonfinite_loss": 1})
    ev.add_many(10, "data", {"batch_loss_ratio": 10.0})
    findings = [spec.run(ev) for spec in SPECS.values()]
    verdict, score, _ = choose_verdict(findings, ev)
    assert verdict == "numerical"
    assert [f.rule for f in findings if f.primary] == ["numerical"]
    findings = [f for f in findings if f.rule != "numerical"]
    for f in findings:
        f.primary = False
    assert choose_verdict(findings, ev)[0] == "data"
    assert choose_verdict([f for f in findings if f.rule != "data"], ev)[0] == "sharpness"
    assert choose_verdict([], ev)[0] == "unexplained"


def _both_curvature_rules_fire(batches_identical):
    """Hand-built evidence on which the Hessian rule and the NTK rule both fire."""
    ev = Evidence(ctx())
    curvature(ev, [4, 6, 8, 9, 10, 18], [0.1] * 6, [15, 17, 19, 20.5, 21, 18],
              [1.0, 0.8, 0.6, 0.55, 0.6, 0.5])
    ntk(ev, 8, 1.5, 0.1, 0.2, 100.0)
    ntk(ev, 10, 1.5, 0.5, 0.21, 100.0)
    ntk(ev, 12, 1.4, 4.0, 0.25, 90.0, excess=0.97)
    ntk(ev, 20, 0.8, 0.05, 0.2, 60.0)
    if batches_identical is not None:
        ev.add_many(10, "data", {"batches_identical": batches_identical, "batch_loss_ratio": 1.0})
    findings = [SPECS[r].run(ev) for r in ("sharpness", "catapult")]
    assert all(f.fired for f in findings)
    return findings, ev


@pytest.mark.parametrize("identical, expected", [(0.0, "catapult"), (1.0, "sharpness"),
                                                 (None, "sharpness")])
def test_curvature_tie_is_broken_by_the_batches(identical, expected):
    """Minibatches: a catapult (Zhu et al. 2023); one fixed batch or unknown: sharpening.
    The other rule gets the higher score, so the batches, not the scores, decide."""
    findings, ev = _both_curvature_rules_fire(identical)
    for f in findings:
        f.score = 0.5 if f.rule == expected else 0.9
    assert choose_verdict(findings, ev)[0] == expected


def test_a_rule_cannot_read_a_metric_of_an_engine_it_does_not_need():
    ev = Evidence(ctx())
    ev.add_many(10, "data", {"batches_identical": 0.0})
    view = ev.view(("ntk",))
    with pytest.raises(UndeclaredMetric, match="batches_identical"):
        view.at("batches_identical", 10)
    assert ev.view(("ntk", "data")).at("batches_identical", 10) == 0.0
    with pytest.raises(UndeclaredMetric, match="declare"):
        ev.add(10, "ntk", "batches_identical", 1.0)  # the ntk engine does not declare it


def test_the_verdict_has_no_rule_names_of_its_own():
    """Swap the precedences of two specs and the verdict follows the specs."""
    import dataclasses

    ev = Evidence(ctx())
    findings = [Finding("numerical", "fired", 0.1, "n"), Finding("data", "fired", 0.9, "d")]
    assert choose_verdict(findings, ev)[0] == "numerical"
    swapped = dict(SPECS, numerical=dataclasses.replace(SPECS["numerical"], precedence=30))
    for f in findings:
        f.primary = False
    assert choose_verdict(findings, ev, swapped)[0] == "data"


def test_finding_rows_are_json():
    ev = Evidence(ctx())
    curvature(ev, [4, 8, 10], [0.1] * 3, [15, 19, math.inf], [1.0, 0.6, 0.6])
    row = RULES["sharpness"](ev).to_row("r", 0)
    assert set(row) >= {"rule", "status", "score", "message", "hint", "evidence", "thresholds"}
    assert isinstance(row["evidence"], str)
