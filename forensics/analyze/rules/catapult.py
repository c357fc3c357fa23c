"""Rule `catapult`: the spike is a catapult in the top eigendirections of the tangent kernel.

For loss L = (1/2n)‖F−y‖² gradient descent linearised around w is stable iff
η < η_crit = 2n/λ_max(K), K = J Jᵀ the empirical NTK (for torch's mean-reduced MSE,
L = (1/n)‖r‖², it is n/λ_max(K)). With η_crit < η < η_max the loss first grows, then
λ_max(K) falls until η < η_crit again and the loss drops: a catapult (Lewkowycz et al. 2020,
"The large learning rate phase of deep learning: the catapult mechanism"; Zhu, Liu,
Radhakrishnan & Belkin, "Catapults in SGD: spikes in the training loss and their impact on
generalization through feature learning"). Zhu et al. decompose the loss along K's top-s
eigenvectors, PL_s = (1/n)‖U_sᵀ r‖², PL_s^⊥ = L − PL_s, and find the spike lives in PL_s.

Fires when η > η_crit at onset, most of the loss increase from the quiet reference to the
peak lies in the top-s eigenspace, and λ_max(K) is lower after the spike than before.
"""

from __future__ import annotations

from forensics.analyze.evidence import Evidence, Finding, inconclusive
from forensics.analyze.rules._series import clip01, first, last, peak_value

RULE = "catapult"
HINT = ("the learning rate exceeded the critical 2/λ_max(K) of the kernel: lower the peak lr "
        "or warm up longer; a single catapult that recovers can be benign (it flattens the "
        "kernel and often helps generalisation)")
MIN_TOP_SHARE = 0.5
MAX_KERNEL_RATIO = 0.95


def judge(ev: Evidence) -> Finding:
    ctx = ev.context
    if ctx.optimizer == "adam":
        return inconclusive(RULE, "the kernel's critical lr 2n/λ_max(K) is a (S)GD limit; for "
                            "Adam see adam_beta2_lag")
    if not ev.has("lr_over_eta_crit"):
        return inconclusive(RULE, ev.skipped.get("ntk", "no NTK measurements"))

    at_onset = last(ev, "lr_over_eta_crit", None, ctx.onset)
    # the quiet reference is the last measured step before onset (the onset itself for a
    # spike from the first steps): the loss increase is counted from there
    ref_loss = last(ev, "pl_top", None, ctx.onset - 1) or first(ev, "pl_top", ctx.onset, ctx.onset)
    if at_onset is None or ref_loss is None:
        return inconclusive(RULE, "no NTK measurement at or before onset")
    ref_step = ref_loss[0]
    peak = peak_value(ev, "ntk_loss", ctx.onset, ctx.end if ctx.end is not None else None)
    if peak is None:
        return inconclusive(RULE, "no NTK measurement at the peak")
    peak_step = peak[0]
    d_top = ev.at("pl_top", peak_step) - ev.at("pl_top", ref_step)
    d_all = ev.at("ntk_loss", peak_step) - ev.at("ntk_loss", ref_step)
    top_share = d_top / d_all if d_all > 0 else float("nan")
    k_before = ev.at("ntk_lambda_max", ref_step)
    k_after = last(ev, "ntk_lambda_max", (ctx.end if ctx.end is not None else peak_step), None)
    kernel_ratio = (k_after[1] / k_before) if (k_after and k_before and k_after[0] > peak_step) else None

    evidence = {
        "lr_over_eta_crit": at_onset[1], "at_step": at_onset[0],
        "eta_crit": ev.at("eta_crit", at_onset[0]),
        "ref_step": ref_step, "peak_step": peak_step, "top_s": ev.at("ntk_s", ref_step),
        "loss_increase": d_all, "top_share_of_increase": top_share,
        "ntk_lambda_max_before": k_before,
        "ntk_lambda_max_after": k_after[1] if k_after else None,
        "kernel_ratio": kernel_ratio,
        "ntk_n": ev.at("ntk_n", ref_step),
    }
    thresholds = {"lr_over_eta_crit": 1.0, "min_top_share": MIN_TOP_SHARE,
                  "max_kernel_ratio_after": MAX_KERNEL_RATIO}
    above = at_onset[1] > 1.0
    in_top = top_share == top_share and top_share >= MIN_TOP_SHARE
    if kernel_ratio is None:
        if above and in_top:
            return inconclusive(RULE, "no snapshot after the spike to see whether λ_max(K) fell",
                                **evidence)
        drop = False
    else:
        drop = kernel_ratio < MAX_KERNEL_RATIO
    if above and in_top and drop:
        score = clip01(0.5 + 0.25 * clip01(top_share) + 0.25 * clip01(1 - kernel_ratio))
        return Finding(RULE, "fired", score,
                       f"η = {at_onset[1]:.3g}·η_crit at step {at_onset[0]}; {top_share:.0%} of "
                       f"the loss increase lies in the top-{int(evidence['top_s'] or 0)} NTK "
                       f"eigendirections; λ_max(K) fell ×{kernel_ratio:.3g} after the spike",
                       HINT, evidence=evidence, thresholds=thresholds)
    missing = [w for w, ok in (("η ≤ η_crit", above), ("increase not in the top eigenspace", in_top),
                               ("λ_max(K) did not fall", drop)) if not ok]
    return Finding(RULE, "not_fired", clip01(0.2 * above + 0.2 * in_top + 0.2 * drop),
                   f"no catapult: {'; '.join(missing)} (η/η_crit = {at_onset[1]:.3g})",
                   evidence=evidence, thresholds=thresholds)
