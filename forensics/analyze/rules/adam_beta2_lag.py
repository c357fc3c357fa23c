"""Rule `adam_beta2_lag`: Adam's second moment lags the gradient and the step turns unstable.

When g_t² ≪ v_{t−1} for many coordinates, v decays like β₂^t and responds sluggishly; the
preconditioner P = diag(√v̂ + ε) shrinks too slowly, λ_max(P⁻¹H) stays past 2/η, the gradient
aligns with the top eigendirection, and the loss spikes when the gradient-directional
curvature gᵀP⁻¹Hg/‖g‖² crosses 2/η (the β₂-lag seed: "Adam spikes"). Cohen et al. 2022
("Adaptive Gradient Methods at the Edge of Stability") give the momentum-aware limit
(2+2β₁)/((1−β₁)η), 38/η at β₁ = 0.9; both are reported.

Fires when the pre-spike window is in the lag regime (median ρ = g²/v̂ below 0.1), the
preconditioned sharpness is past 2/η before onset, and the directional curvature is past
2/η at onset. The evidence says which limit separates the spike from the quiet reference
step: on the shipped Adam run it is Cohen's 38/η (the quiet step sits at 31/η, already far
past 2/η). Inconclusive when ε caps the preconditioner (then a low ρ means nothing).
"""

from __future__ import annotations

import numpy as np

from forensics.analyze.evidence import Evidence, Finding, inconclusive
from forensics.analyze.rules._series import clip01, first, peak_value, window

RULE = "adam_beta2_lag"
HINT = ("lower β₂ (e.g. 0.95) so v tracks g², or raise ε; lower the lr late in training or "
        "clip the update; Adam's spikes after the loss gets small are this mechanism")
MAX_RATIO_MEDIAN = 0.1
MAX_EPS_SHARE = 0.5
COHEN_MARGIN = 0.95  # 'at' Adam's edge of stability: within 5% of (2+2β₁)/((1−β₁)η)


def judge(ev: Evidence) -> Finding:
    ctx = ev.context
    if ctx.optimizer == "sgd":
        return Finding(RULE, "not_fired", 0.0, "not an Adam run: there is no second moment to lag")
    if ctx.optimizer != "adam":
        return inconclusive(RULE, f"optimizer family {ctx.optimizer!r} has no known second moment")
    if not ev.has("eta_pre_lambda_max"):
        return inconclusive(RULE, ev.skipped.get("adam", "no preconditioned measurements"))

    _, ratio = window(ev, "ratio_median", None, ctx.onset)
    _, eps_share = window(ev, "eps_dominated_share", None, ctx.onset)
    _, decay = window(ev, "v_decay_vs_beta2", None, ctx.onset)
    pre_sharp = peak_value(ev, "eta_pre_lambda_max", None, ctx.onset)
    quiet = first(ev, "eta_pre_lambda_max", None, ctx.onset)
    _, v_dir = window(ev, "eta_pre_grad_curvature", None, ctx.onset)
    lag = ratio.size > 0 and float(np.nanmedian(ratio)) < MAX_RATIO_MEDIAN
    capped = eps_share.size > 0 and float(np.nanmedian(eps_share)) > MAX_EPS_SHARE
    beta1 = ctx.betas[0] if ctx.betas else 0.9
    limit_cohen = (2 + 2 * beta1) / (1 - beta1)
    dir_onset = float(v_dir[-1]) if v_dir.size else float("nan")
    sharp = pre_sharp[1] if pre_sharp else float("nan")
    quiet_value = quiet[1] if quiet and pre_sharp and quiet[0] < pre_sharp[0] else float("nan")
    # which limit tells the spiking steps from the quiet reference on this run
    separating = [name for name, lim in (("seed 2/η", 2.0), ("Cohen (2+2β₁)/((1−β₁)η)",
                                                            COHEN_MARGIN * limit_cohen))
                  if sharp >= lim and not quiet_value >= lim]
    evidence = {
        "ratio_median_pre": float(np.nanmedian(ratio)) if ratio.size else None,
        "eps_dominated_share": float(np.nanmedian(eps_share)) if eps_share.size else None,
        "v_decay_vs_beta2": float(np.nanmedian(decay)) if decay.size else None,
        "eta_pre_lambda_max": sharp if pre_sharp else None,
        "eta_pre_lambda_max_step": pre_sharp[0] if pre_sharp else None,
        "eta_pre_lambda_max_quiet": quiet_value, "quiet_step": quiet[0] if quiet else None,
        "eta_pre_grad_curvature_onset": dir_onset,
        "eta_pre_grad_curvature_sym_onset": ev.at("eta_pre_grad_curvature_sym", ctx.onset),
        "separating_limits": separating,
    }
    thresholds = {"max_ratio_median": MAX_RATIO_MEDIAN, "limit_seed": 2.0,
                  "limit_cohen": limit_cohen, "cohen_margin": COHEN_MARGIN,
                  "max_eps_share": MAX_EPS_SHARE, "units": "η × curvature (dimensionless)"}
    if capped:
        return inconclusive(RULE, f"ε dominates √v̂ for {evidence['eps_dominated_share']:.0%} of "
                            "coordinates: the preconditioner is capped, a low g²/v proves nothing",
                            **evidence)
    past = sharp > 2.0
    if lag and past and dir_onset > 2.0:
        at_cohen = sharp >= COHEN_MARGIN * limit_cohen and dir_onset >= COHEN_MARGIN * limit_cohen
        score = clip01(0.6 + 0.2 * at_cohen + 0.2 * bool(separating))
        sep = (f"; separating limit: {', '.join(separating)}" if separating
               else "; neither limit separates it from the quiet reference")
        return Finding(RULE, "fired", score,
                       f"g²/v̂ median {evidence['ratio_median_pre']:.2g} before onset (v decays "
                       f"like β₂^t); η·λ_max(P⁻¹H) = {sharp:.3g} (quiet step "
                       f"{evidence['quiet_step']}: {quiet_value:.3g}) and η·gᵀP⁻¹Hg/‖g‖² = "
                       f"{dir_onset:.3g} at onset, against 2 (seed) and {limit_cohen:.3g} (Cohen)"
                       f"{sep}", HINT, evidence=evidence, thresholds=thresholds)
    missing = [w for w, ok in (("no β₂ lag (g²/v̂ not ≪ 1)", lag),
                               ("preconditioned sharpness below 2/η", past),
                               ("directional curvature below 2/η at onset", dir_onset > 2.0))
               if not ok]
    return Finding(RULE, "not_fired", clip01(0.2 * lag + 0.2 * past),
                   "no β₂ lag instability: " + "; ".join(missing),
                   evidence=evidence, thresholds=thresholds)
