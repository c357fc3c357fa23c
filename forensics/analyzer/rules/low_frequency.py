"""Rule `low_frequency`: the spike's excess residual and its rapid descent are low-frequency.

Li, Xu & Zhang (2023, "Loss Spike in Training Neural Networks", arXiv 2305.12133) explain the
rapid descent after a spike's peak by the frequency principle (Xu, Zhang, Luo, Xiao & Ma 2019,
"Frequency Principle: Fourier Analysis Sheds Light on Deep Neural Networks", arXiv
1901.06523): the deviation
along the first eigendirection is mostly low-frequency, and low frequencies are fitted
fast. Bands come from the DFT on a 1-D uniform grid, or from Gaussian filtering in input
space otherwise (y_low = Σ_j y_j G^δ(x_i−x_j) / Σ_j G^δ). This rule describes the descent;
it never is a spike's verdict on its own.
"""

from __future__ import annotations

from forensics.analyzer.evidence import EvidenceView, Finding, inconclusive
from forensics.analyzer.plots import Lines
from forensics.analyzer.spec import Mechanism, Thresholds

RULE = "low_frequency"
HINT = ("no action needed for the descent itself; the ascent's cause (see the verdict) is what "
        "to mitigate")
T = Thresholds(
    min_low_share=(0.5, "the descent is dominated by low frequencies (Li, Xu & Zhang 2023, \"Loss "
                   "Spike in Training Neural Networks\", arXiv 2305.12133); rationale: "
                   "'dominated' = more than half of the energy"),
)


def judge(ev: EvidenceView) -> Finding:
    """The low-frequency shares of the excess residual and of the descent."""
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
    thresholds = {"min_low_share": T.min_low_share}
    if excess >= T.min_low_share and descent >= T.min_low_share:
        return Finding(RULE, "fired", min(excess, descent),
                       f"{excess:.0%} of the excess residual at the peak and {descent:.0%} of the "
                       f"rapid descent are low-frequency", HINT,
                       evidence=evidence, thresholds=thresholds)
    return Finding(RULE, "not_fired", min(excess, descent),
                   f"low-frequency share: {excess:.0%} of the excess, {descent:.0%} of the descent",
                   evidence=evidence, thresholds=thresholds)


SPEC = Mechanism(
    false_alarms=('not measured: a descent rule needs steps after a peak, which a pseudo-spike on a clean '
                  'run lacks'),
    name=RULE, role="descent", needs=("frequency",), judge=judge, hint=HINT, thresholds=T,
    summary=f"≥ {T.min_low_share:.0%} of both the excess residual at the peak and the rapid "
            "descent after it are low-frequency (describes the descent; never a verdict)",
    badge="blue", colour="#17becf",
    panel=(Lines("low- vs high-frequency error from peak to recovery",
                 {"e_low": "low-frequency error", "e_high": "high-frequency error"},
                 y_title="relative error (log)", log_y=True,
                 after_peak={"recovery_low": "low recovered", "recovery_high": "high recovered"}),),
)
