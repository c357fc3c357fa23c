"""Rule `adam_beta2_lag`: Adam's second moment lags the gradient and the step turns unstable.

When g_t² ≪ v_{t−1} for many coordinates, v decays like β₂^t and responds sluggishly; the
preconditioner P = diag(√v̂ + ε) shrinks too slowly, λ_max(P⁻¹H) stays past 2/η, the gradient
aligns with the top eigendirection, and the loss spikes when the gradient-directional
curvature gᵀP⁻¹Hg/‖g‖² crosses 2/η (Bai, Zhou, Zhao, Li, Li, Xiong, Yang, Zhang & Xu 2025,
"Adaptive Preconditioners Trigger Loss Spikes in Adam", arXiv 2506.04805; 2/η is their
β₁ = 0 analysis). Cohen et al. 2022 ("Adaptive Gradient Methods at the Edge of Stability",
arXiv 2207.14484) give the momentum-aware limit (2+2β₁)/((1−β₁)η), 38/η at β₁ = 0.9; both
are reported.

Fires when the pre-spike window is in the lag regime (median ρ = g²/v̂ below 0.1), the
preconditioned sharpness is past 2/η before onset, and the directional curvature is past
2/η at onset. The evidence says which limit separates the spike from the quiet reference
step: on the shipped Adam run it is Cohen's 38/η (the quiet step sits at 31/η, already far
past 2/η). Inconclusive when ε caps the preconditioner (then a low ρ means nothing).
"""

from __future__ import annotations

import numpy as np

from forensics.analyzer.evidence import EvidenceView, Finding, inconclusive
from forensics.analyzer.plots import Decay, Limit, Lines, Row
from forensics.analyzer.rules._series import clip01, first, peak_value, window
from forensics.analyzer.spec import CURVATURE_LIMIT, Mechanism, Thresholds

RULE = "adam_beta2_lag"
HINT = ("lower β₂ (e.g. 0.95) so v tracks g², or raise ε; lower the lr late in training or "
        "clip the update; Adam's spikes after the loss gets small are this mechanism")
BAI_2025 = ("Bai, Zhou, Zhao, Li, Li, Xiong, Yang, Zhang & Xu 2025, \"Adaptive Preconditioners "
            "Trigger Loss Spikes in Adam\", arXiv 2506.04805")
COHEN_2022 = ("Cohen, Ghorbani, Krishnan, Agarwal, Medapati, Badura, Suo, Cardoze, Nado, Dahl & "
              "Gilmer 2022, \"Adaptive Gradient Methods at the Edge of Stability\", arXiv 2207.14484")
T = Thresholds(
    max_ratio_median=(0.1, "the lag regime is g² ≪ v̂ (" + BAI_2025 + "); rationale: '≪' = a "
                      "median ratio below 0.1"),
    limit_beta1_zero=(2.0, "η·λ_max(P⁻¹H) < 2, the β₁ = 0 stability analysis of " + BAI_2025),
    limit_cohen=("(2+2β₁)/(1−β₁)", "Adam's edge of stability with momentum β₁ (38 at β₁ = 0.9); "
                 + COHEN_2022),
    cohen_margin=(0.95, "rationale: 'at' Adam's edge of stability = within 5% of its limit"),
    max_eps_share=(0.5, "rationale: when ε dominates √v̂ on most coordinates the preconditioner "
                   "is capped, and a low g²/v̂ proves nothing"),
)
BETA1_ZERO = "2/η (β₁ = 0 analysis)"
COHEN = "(2+2β₁)/((1−β₁)η) (Cohen et al. 2022)"


def judge(ev: EvidenceView) -> Finding:
    """The β₂-lag regime, the preconditioned sharpness and the directional curvature at onset."""
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
    lag = ratio.size > 0 and float(np.nanmedian(ratio)) < T.max_ratio_median
    capped = eps_share.size > 0 and float(np.nanmedian(eps_share)) > T.max_eps_share
    beta1 = ctx.betas[0] if ctx.betas else 0.9
    limit_cohen = (2 + 2 * beta1) / (1 - beta1)
    dir_onset = float(v_dir[-1]) if v_dir.size else float("nan")
    sharp = pre_sharp[1] if pre_sharp else float("nan")
    quiet_value = quiet[1] if quiet and pre_sharp and quiet[0] < pre_sharp[0] else float("nan")
    # which limit tells the spiking steps from the quiet reference on this run
    separating = [name for name, lim in ((BETA1_ZERO, T.limit_beta1_zero),
                                         (COHEN, T.cohen_margin * limit_cohen))
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
    thresholds = {"max_ratio_median": T.max_ratio_median, "limit_beta1_zero": T.limit_beta1_zero,
                  "limit_cohen": limit_cohen, "cohen_margin": T.cohen_margin,
                  "max_eps_share": T.max_eps_share, "units": "η × curvature (dimensionless)"}
    if capped:
        return inconclusive(RULE, f"ε dominates √v̂ for {evidence['eps_dominated_share']:.0%} of "
                            "coordinates: the preconditioner is capped, a low g²/v proves nothing",
                            **evidence)
    past = sharp > T.limit_beta1_zero
    if lag and past and dir_onset > T.limit_beta1_zero:
        at_cohen = sharp >= T.cohen_margin * limit_cohen and dir_onset >= T.cohen_margin * limit_cohen
        score = clip01(0.6 + 0.2 * at_cohen + 0.2 * bool(separating))
        sep = (f"; separating limit: {', '.join(separating)}" if separating
               else "; neither limit separates it from the quiet reference")
        return Finding(RULE, "fired", score,
                       f"g²/v̂ median {evidence['ratio_median_pre']:.2g} before onset (v decays "
                       f"like β₂^t); η·λ_max(P⁻¹H) = {sharp:.3g} (quiet step "
                       f"{evidence['quiet_step']}: {quiet_value:.3g}) and η·gᵀP⁻¹Hg/‖g‖² = "
                       f"{dir_onset:.3g} at onset, against the limits {BETA1_ZERO} and "
                       f"{limit_cohen:.3g}/η (β₁ = {beta1:g}, Cohen et al. 2022){sep}", HINT,
                       evidence=evidence, thresholds=thresholds)
    missing = [w for w, ok in (("no β₂ lag (g²/v̂ not ≪ 1)", lag),
                               ("preconditioned sharpness below 2/η", past),
                               ("directional curvature below 2/η at onset",
                                dir_onset > T.limit_beta1_zero))
               if not ok]
    return Finding(RULE, "not_fired", clip01(0.2 * lag + 0.2 * past),
                   "no β₂ lag instability: " + "; ".join(missing),
                   evidence=evidence, thresholds=thresholds)


SPEC = Mechanism(
    name=RULE, role="ascent", needs=("adam",), judge=judge, hint=HINT, thresholds=T,
    summary=f"median ρ = g²/v̂ < {T.max_ratio_median:g} before onset, η·λ_max(P⁻¹H) > 2 before "
            "onset and η·gᵀP⁻¹Hg/‖g‖² > 2 at onset; the limit (2+2β₁)/(1−β₁) is reported and "
            f"says which limit separates the spike from the quiet step. Inconclusive when ε "
            f"dominates √v̂ on > {T.max_eps_share:.0%} of coordinates",
    badge="violet", colour="#9467bd", precedence=20,
    precedence_note=CURVATURE_LIMIT,
    panel=(Lines("preconditioned sharpness against its stability limits",
                 {"eta_pre_lambda_max": "η·λ_max(P⁻¹H)", "eta_pre_grad_curvature": "η·gᵀP⁻¹Hg/‖g‖²",
                  "eta_lambda_max": "η·λ_max (plain, no limit for Adam)"},
                 y_title="η × curvature (log)", log_y=True,
                 limits=(Limit(BETA1_ZERO, T.limit_beta1_zero, "limit_beta1_zero"),
                         Limit("{value:g}/η (β₁-aware, Cohen et al. 2022)", 38.0, "limit_cohen"))),
           Row(Lines("g²/v̂: the gradient against v's memory", {"ratio_median": "g²/v̂ median (snapshot)"},
                     recorded={"adam_ratio_median": "g²/v̂ median (per step)"}, y_title="g²/v̂ (log)",
                     log_y=True, limits=(Limit(f"{T.max_ratio_median:g}", T.max_ratio_median),)),
               Decay("v decays like β₂^t", "v_sum", "Σv (second moment)", run_field="beta2",
                     reference="Σv₀·β₂^(t−{t0}), β₂ = {factor:g}", y_title="Σv (log)",
                     rate_metric="v_decay_vs_beta2", rate=" (rate {rate:.2f}× β₂'s)"))),
    counterfactuals=("beta2=0.95", "eps=x1000"),
)
