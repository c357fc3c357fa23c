"""Rule `low_frequency`: the spike's excess residual and its rapid descent are low-frequency.

Li, Xu & Zhang ("Loss Spike in Training Neural Networks") explain the rapid descent after a
spike's peak by the frequency principle (Xu et al., "Frequency Principle"): the deviation
along the first eigendirection is mostly low-frequency, and low frequencies are fitted
fast. Bands come from the DFT on a 1-D uniform grid, or from Gaussian filtering in input
space otherwise (y_low = Σ_j y_j G^δ(x_i−x_j) / Σ_j G^δ). This rule describes the descent;
it never is a spike's verdict on its own.
"""

from __future__ import annotations

from forensics.analyze.evidence import Evidence, Finding, inconclusive

RULE = "low_frequency"
HINT = ("no action needed for the descent itself; the ascent's cause (see the verdict) is what "
        "to mitigate")
MIN_SHARE = 0.5


def judge(ev: Evidence) -> Finding:
    ctx = ev.context
    excess = ev.at("low_share_excess", ctx.peak)
    descent = ev.at("low_share_descent", ctx.peak)
    if excess is None or descent is None:
        return inconclusive(RULE, ev.skipped.get("frequency", "no residuals around the peak"))
    evidence = {
        "low_share_excess": excess, "low_share_descent": descent,
        "method": "dft" if ev.at("freq_method_dft", ctx.peak) else "gaussian",
        "cutoff": ev.at("freq_cutoff", ctx.peak),
        "recovery_low_steps": ev.at("recovery_low", ctx.peak),
        "recovery_high_steps": ev.at("recovery_high", ctx.peak),
    }
    thresholds = {"min_low_share": MIN_SHARE}
    if excess >= MIN_SHARE and descent >= MIN_SHARE:
        return Finding(RULE, "fired", min(excess, descent),
                       f"{excess:.0%} of the excess residual at the peak and {descent:.0%} of the "
                       f"rapid descent are low-frequency", HINT,
                       evidence=evidence, thresholds=thresholds)
    return Finding(RULE, "not_fired", min(excess, descent),
                   f"low-frequency share: {excess:.0%} of the excess, {descent:.0%} of the descent",
                   evidence=evidence, thresholds=thresholds)
