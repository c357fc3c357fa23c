"""Rule `sharpness`: the edge of stability / lower-loss-as-sharper explanation of an ascent.

Gradient descent on a quadratic with curvature λ is stable iff η·λ < 2; heavy-ball momentum β
moves the limit to (2+2β) (Cohen, Kaur, Li, Kolter & Talwalkar 2021, "Gradient Descent on
Neural Networks Typically Occurs at the Edge of Stability", arXiv 2103.00065). Li, Xu & Zhang
(2023, "Loss Spike in Training Neural Networks", arXiv 2305.12133) describe the ascent as
training entering a lower-loss-as-sharper (LLAS) region: loss falls while λ_max rises, until
η·λ_max passes the limit and the loss grows exponentially along the top eigendirection.
Gilmer et al. (2021, "A Loss Curvature Perspective on Training Instability in Deep Learning",
arXiv 2110.04369) show warmup and a lower peak lr are the cure.

Fires when η·λ_max of the batch Hessian is past the limit at or just before onset and the
crossing was driven by curvature (λ_max rose), not only by the learning rate. Evidence of
the LLAS phase (loss down, λ_max up across the pre-spike window) raises the score.
"""

from __future__ import annotations

import math

from forensics.analyzer.evidence import EvidenceView, Finding, inconclusive
from forensics.analyzer.plots import Limit, Lines
from forensics.analyzer.rules._series import clip01, first, last, peak_value
from forensics.analyzer.spec import CURVATURE_LIMIT, Mechanism, Thresholds

RULE = "sharpness"
HINT = ("lower the peak learning rate or add/extend warmup so η·λ_max stays under the "
        "limit; gradient clipping bounds the step along the sharp direction")
COHEN_2021 = ("Cohen, Kaur, Li, Kolter & Talwalkar 2021, \"Gradient Descent on Neural Networks "
              "Typically Occurs at the Edge of Stability\", arXiv 2103.00065")
T = Thresholds(
    limit_gd=(2.0, "GD on a quadratic is stable iff η·λ < 2; " + COHEN_2021),
    limit_momentum=("2+2β", "heavy-ball momentum β moves the limit to (2+2β)/η; " + COHEN_2021),
    llas_min_sharpening=(1.02, "rationale: λ_max must grow by more than 2% from the quiet "
                         "reference to count as a lower-loss-as-sharper phase (Li, Xu & Zhang "
                         "2023, \"Loss Spike in Training Neural Networks\", arXiv 2305.12133); "
                         "20× the Lanczos tolerance"),
    lr_driven_min_growth=(1.05, "rationale: the crossing is blamed on the lr (warmup, a schedule) "
                          "when the lr grew by more than 5% and more than λ_max did: the lr "
                          "moved into the limit, the curvature did not"),
)


def judge(ev: EvidenceView) -> Finding:
    """η·λ_max of the batch Hessian against 2+2β, and whether curvature or the lr crossed it."""
    ctx = ev.context
    if ctx.optimizer == "adam":
        return inconclusive(RULE, "adaptive optimizer: the plain η·λ_max has no stability "
                            "limit here; Adam's limit is on the preconditioned curvature λ_max(P⁻¹H)")
    if not ev.has("eta_lambda_max"):
        why = ev.skipped.get("curvature", "no curvature measurements")
        return inconclusive(RULE, why)

    limit = T.limit_gd + T.limit_gd * ctx.momentum
    crossing = peak_value(ev, "eta_lambda_max", None, ctx.onset)
    if crossing is None:
        return inconclusive(RULE, "no finite sharpness measured at or before onset")
    cross_step, cross_value = crossing
    ref = first(ev, "eta_lambda_max", None, ctx.onset)
    lam_ref, lam_cross = first(ev, "lambda_max", None, ctx.onset), ev.at("lambda_max", cross_step)
    lr_ref, lr_cross = first(ev, "lr", None, ctx.onset), ev.at("lr", cross_step)
    dlog_lam = _dlog(lam_ref, lam_cross)
    dlog_lr = _dlog(lr_ref, lr_cross)
    loss_ref, loss_last = first(ev, "loss", None, ctx.onset - 1), last(ev, "loss", None, ctx.onset - 1)
    llas = bool(dlog_lam > math.log(T.llas_min_sharpening) and loss_ref is not None and loss_last is not None
                and loss_last[1] < loss_ref[1] and loss_last[0] > loss_ref[0])
    after = last(ev, "eta_lambda_max", ctx.onset + 1, None)
    history = ref is not None and ref[0] < cross_step
    # without a quiet reference (a spike from init) the crossing cannot be blamed on sharpening
    lr_driven = (not history) or dlog_lr > max(dlog_lam, math.log(T.lr_driven_min_growth))

    evidence = {
        "eta_lambda_max": cross_value, "at_step": cross_step, "limit": limit,
        "eta_lambda_max_ref": ref[1] if ref else None, "ref_step": ref[0] if ref else None,
        "lambda_max_growth": math.exp(dlog_lam), "lr_growth": math.exp(dlog_lr),
        "llas": llas, "lr_driven": lr_driven,
        "eta_lambda_max_after": after[1] if after else None,
    }
    thresholds = {"limit_gd": T.limit_gd, "limit_momentum": limit, "momentum": ctx.momentum,
                  "llas_min_sharpening": T.llas_min_sharpening}
    over = cross_value / limit
    if over < 1.0:
        return Finding(RULE, "not_fired", clip01(over - 0.5),
                       f"η·λ_max peaked at {cross_value:.3g} (step {cross_step}), below the "
                       f"limit {limit:.3g}: the ascent is not a sharpness instability",
                       HINT, evidence=evidence, thresholds=thresholds)
    if lr_driven:
        return Finding(RULE, "not_fired", 0.3,
                       f"η·λ_max = {cross_value:.3g} > {limit:.3g} at step {cross_step}, but the "
                       f"learning rate grew ×{math.exp(dlog_lr):.3g} while λ_max grew "
                       f"×{math.exp(dlog_lam):.3g}"
                       + ("" if history else " (no quiet reference before it)")
                       + ": the crossing is lr-driven, not sharpening",
                       HINT, evidence=evidence, thresholds=thresholds)
    score = clip01(0.6 + 0.2 * llas + 0.2 * clip01((over - 1.0) * 5.0))
    phase = " after a lower-loss-as-sharper phase" if llas else ""
    return Finding(RULE, "fired", score,
                   f"η·λ_max reached {cross_value:.3g} > {limit:.3g} at step {cross_step}"
                   f"{phase} (λ_max ×{math.exp(dlog_lam):.3g} since step {evidence['ref_step']})",
                   HINT, evidence=evidence, thresholds=thresholds)


def _dlog(a, b) -> float:
    """log(b/a) for (step, value) pairs / floats; 0 when either is missing or non-positive."""
    va = a[1] if isinstance(a, tuple) else a
    vb = b[1] if isinstance(b, tuple) else b
    if va is None or vb is None or not (va > 0 and vb > 0):
        return 0.0
    return math.log(vb / va)


SPEC = Mechanism(
    false_alarms=('0 of 4 (S)GD pseudo-spikes judged; measured by `python -m '
                  'forensics.analyzer.false_alarms` on the shipped clean runs (clean_gd, clean_sgd, '
                  'adam_control, large_batch; a pseudo-spike at each captured snapshot after the first); '
                  'few samples'),
    name=RULE, role="ascent", needs=("curvature",), judge=judge, hint=HINT, thresholds=T,
    summary="η·λ_max ≥ 2+2β at or before onset, and curvature (not the lr) drove the crossing; "
            "a lower-loss-as-sharper phase (loss down, λ_max up over the pre-window) raises the "
            "score. Inconclusive for Adam (its limit is on the preconditioned sharpness)",
    badge="red", colour="#d62728", precedence=20,
    precedence_note=CURVATURE_LIMIT,
    panel=(Lines("η·λ_max against its stability limit",
                 {"eta_lambda_max": "η·λ_max", "eta_grad_curvature": "η·gᵀHg/‖g‖²"},
                 y_title="η × curvature",
                 limits=(Limit("2 (GD)", 2.0, "limit_gd"),
                         Limit("{value:g} = 2+2β (momentum)", metric="limit_momentum"))),),
    counterfactuals=("lr=x0.5", "clip=1.0"),
)
