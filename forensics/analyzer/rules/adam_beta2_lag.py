"""Rule `adam_beta2_lag`: Adam's second moment lags the gradient and the step turns unstable.

When g_t² ≪ v_{t−1} for many coordinates, v decays like β₂^t and responds sluggishly; the
preconditioner P = diag(√v̂ + ε) shrinks too slowly, λ_max(P⁻¹H) stays past 2/η, the gradient
aligns with the top eigendirection, and the loss spikes when the gradient-directional
curvature gᵀP⁻¹Hg/‖g‖² crosses 2/η (Bai, Zhou, Zhao, Li, Li, Xiong, Yang, Zhang & Xu 2025,
"Adaptive Preconditioners Trigger Loss Spikes in Adam", arXiv 2506.04805; 2/η is their
β₁ = 0 analysis). Cohen et al. 2022 ("Adaptive Gradient Methods at the Edge of Stability",
arXiv 2207.14484) give the momentum-aware limit (2+2β₁)/((1−β₁)η), 38/η at β₁ = 0.9; both
are reported.

Fires when the preconditioned sharpness η·λ_max(P⁻¹H) reaches the stability limit for the
run's β₁, (2+2β₁)/(1−β₁) (38 at β₁ = 0.9; 2 at β₁ = 0), at or before onset; the message names
that limit and the step it was first crossed. 2/η alone does not separate: with β₁ = 0.9 the
preconditioned sharpness sits above 2/η on most quiet steps. The β₂ lag (median ρ = g²/v̂ below
0.1 before onset) and the directional curvature at the limit raise the score but are not
evidence alone (ε can cap 1/P). "Separates" is claimed only against a measured quiet reference
below the limit, never against a NaN. Inconclusive when ε caps the preconditioner.
"""

from __future__ import annotations

import numpy as np

from forensics.analyzer.evidence import EvidenceView, Finding, inconclusive
from forensics.analyzer.hints import Advice
from forensics.analyzer.plots import Decay, Limit, Lines, Row
from forensics.analyzer.rules._series import clip01, first, peak_value, window
from forensics.analyzer.spec import CURVATURE_LIMIT, Mechanism, Thresholds

RULE = "adam_beta2_lag"
HINT = (Advice("beta2", lambda b: 0.95 if b > 0.95 else None, "lower β₂ from {now} to {to} so v "
               "tracks g²", "lower β₂ (0.95 is usual) so v tracks g²"),
        Advice("eps", lambda e: e * 1000 if e < 1e-5 else None, "raise ε from {now} to {to} (it "
               "caps 1/(√v̂+ε))", "raise ε"),
        "lower the lr late in training or clip the update; Adam's spikes after the loss gets "
        "small are this mechanism")
BAI_2025 = ("Bai, Zhou, Zhao, Li, Li, Xiong, Yang, Zhang & Xu 2025, \"Adaptive Preconditioners "
            "Trigger Loss Spikes in Adam\", arXiv 2506.04805")
COHEN_2022 = ("Cohen, Ghorbani, Krishnan, Agarwal, Medapati, Badura, Suo, Cardoze, Nado, Dahl & "
              "Gilmer 2022, \"Adaptive Gradient Methods at the Edge of Stability\", arXiv 2207.14484")
T = Thresholds(
    max_ratio_median=(0.1, "the lag regime is g² ≪ v̂ (" + BAI_2025 + "); rationale: '≪' = a "
                      "median ratio below 0.1"),
    limit_beta1_zero=(2.0, "η·λ_max(P⁻¹H) < 2, the β₁ = 0 stability analysis of " + BAI_2025
                      + "; reported only: with β₁ > 0 it does not separate spiking from quiet steps"),
    limit_cohen=("(2+2β₁)/(1−β₁)", "Adam's edge of stability with momentum β₁ (38 at β₁ = 0.9); "
                 + COHEN_2022),
    cohen_margin=(0.95, "rationale: 'at' Adam's edge of stability = within 5% of its limit"),
    max_eps_share=(0.5, "rationale: when ε dominates √v̂ on most coordinates the preconditioner "
                   "is capped, and a low g²/v̂ proves nothing"),
)
BETA1_ZERO = "2/η (β₁ = 0 analysis)"


def judge(ev: EvidenceView) -> Finding:
    """η·λ_max(P⁻¹H) against (2+2β₁)/(1−β₁) for the run's β₁, when it was crossed, and the lag."""
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
    steps, sharp_pre = window(ev, "eta_pre_lambda_max", None, ctx.onset)
    pre_sharp = peak_value(ev, "eta_pre_lambda_max", None, ctx.onset)
    _, v_dir = window(ev, "eta_pre_grad_curvature", None, ctx.onset)
    lag = ratio.size > 0 and float(np.nanmedian(ratio)) < T.max_ratio_median
    capped = eps_share.size > 0 and float(np.nanmedian(eps_share)) > T.max_eps_share
    beta1 = float(ctx.betas[0]) if ctx.betas else 0.9
    limit = limit_for(beta1)
    bar = T.cohen_margin * limit
    sharp = pre_sharp[1] if pre_sharp else float("nan")
    crossed = [int(s) for s, v in zip(steps, sharp_pre, strict=True) if np.isfinite(v) and v >= bar]
    cross_step = crossed[0] if crossed else None
    quiet = first(ev, "eta_pre_lambda_max", None, (cross_step - 1) if cross_step is not None else ctx.onset)
    quiet_value = quiet[1] if quiet and (cross_step is None or quiet[0] < cross_step) else float("nan")
    separates = bool(cross_step is not None and np.isfinite(quiet_value) and quiet_value < bar)
    dir_onset = float(v_dir[-1]) if v_dir.size and np.isfinite(v_dir[-1]) else float("nan")
    # η·λ_max is compared with the dimensionless (2+2β₁)/(1−β₁); the limit on λ_max itself is that over η
    name = (f"(2+2β₁)/(1−β₁) = {limit:.3g} at β₁ = {beta1:g} (λ_max(P⁻¹H) < {limit:.3g}/η, "
            "Cohen et al. 2022)")
    evidence = {
        "ratio_median_pre": float(np.nanmedian(ratio)) if ratio.size else None,
        "eps_dominated_share": float(np.nanmedian(eps_share)) if eps_share.size else None,
        "v_decay_vs_beta2": float(np.nanmedian(decay)) if decay.size else None,
        "eta_pre_lambda_max": sharp if pre_sharp else None,
        "eta_pre_lambda_max_step": pre_sharp[0] if pre_sharp else None,
        "crossed_at_step": cross_step, "limit": limit, "limit_name": name, "beta1": beta1,
        "beta1_assumed": not ctx.betas,
        "eta_pre_lambda_max_quiet": quiet_value if np.isfinite(quiet_value) else None,
        "quiet_step": quiet[0] if quiet and np.isfinite(quiet_value) else None,
        "separates_from_quiet": separates,
        "eta_pre_grad_curvature_onset": dir_onset if np.isfinite(dir_onset) else None,
        "eta_pre_grad_curvature_sym_onset": ev.at("eta_pre_grad_curvature_sym", ctx.onset),
        "above_beta1_zero_limit": bool(sharp > T.limit_beta1_zero),
    }
    thresholds = {"max_ratio_median": T.max_ratio_median, "limit_beta1_zero": T.limit_beta1_zero,
                  "limit_cohen": limit, "cohen_margin": T.cohen_margin,
                  "max_eps_share": T.max_eps_share, "units": "η × curvature (dimensionless)"}
    if capped:
        return inconclusive(RULE, f"ε dominates √v̂ for {evidence['eps_dominated_share']:.0%} of "
                            "coordinates: the preconditioner is capped, a low g²/v proves nothing",
                            **evidence)
    if cross_step is not None:
        at_dir = bool(dir_onset >= bar)
        score = clip01(0.6 + 0.15 * lag + 0.15 * separates + 0.1 * at_dir)
        if separates:
            versus = f"; the quiet step {quiet[0]} sat below it ({quiet_value:.3g})"
        elif np.isfinite(quiet_value):
            versus = f"; the quiet step {quiet[0]} was already past it ({quiet_value:.3g})"
        else:
            versus = "; no measured quiet step to compare with"
        lag_text = (f"; β₂ lag: g²/v̂ median {evidence['ratio_median_pre']:.2g} before onset"
                    if lag else "; no β₂ lag (g²/v̂ not ≪ 1)")
        return Finding(RULE, "fired", score,
                       f"η·λ_max(P⁻¹H) reached {sharp:.3g}, past the limit {name}, first at step "
                       f"{cross_step} (onset {ctx.onset}){versus}; η·gᵀP⁻¹Hg/‖g‖² = "
                       f"{dir_onset:.3g} at onset{lag_text}",
                       evidence=evidence, thresholds=thresholds)
    why = f"η·λ_max(P⁻¹H) peaked at {sharp:.3g} before onset, below the limit {name}"
    if lag:
        why += "; a low g²/v̂ alone is not evidence"
    if sharp > T.limit_beta1_zero and beta1 > 0:
        why += " (past 2, the β₁ = 0 limit (λ_max < 2/η), which does not apply with momentum)"
    return Finding(RULE, "not_fired", clip01(0.2 * lag + 0.3 * clip01(sharp / bar)),
                   "no β₂-lag instability: " + why, evidence=evidence, thresholds=thresholds)


def limit_for(beta1: float) -> float:
    """Adam's stability limit on η·λ_max(P⁻¹H) for momentum β₁: (2+2β₁)/(1−β₁) (Cohen et al.
    2022, arXiv 2207.14484); 2 at β₁ = 0, 38 at β₁ = 0.9. ValueError for β₁ outside [0, 1)."""
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f"β₁ must be in [0, 1), got {beta1!r}")
    return (2 + 2 * beta1) / (1 - beta1)


SPEC = Mechanism(
    false_alarms="0 fired; not judged on the shipped clean Adam run (adam_control, step 3000: ε "
                 "caps the preconditioner, inconclusive) by `python -m forensics.analyzer.false_alarms`; "
                 "the adam_beta2_lag run's quiet step 3000 sits at η·λ_max(P⁻¹H) = 31.2 < 36.1 (not "
                 "past the limit); few samples",
    name=RULE, role="ascent", needs=("adam",), judge=judge, hint=HINT, thresholds=T,
    summary=f"η·λ_max(P⁻¹H) ≥ {T.cohen_margin:g}× (2+2β₁)/(1−β₁) for the run's β₁ (38 at 0.9, 2 "
            "at 0) at or before onset; the step it was first crossed and whether a measured quiet "
            f"step sat below it are reported; a β₂ lag (median ρ = g²/v̂ < {T.max_ratio_median:g}) "
            "raises the score but is no evidence alone. Inconclusive when ε dominates √v̂ on > "
            f"{T.max_eps_share:.0%} of coordinates",
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
