"""Rule `condensation`: first-layer neurons align into fewer directions after the spike.

With ŵ_k = [w_k; b_k]/‖[w_k; b_k]‖ for each first-layer neuron and C = ŴŴᵀ, condensation
means many |C_ij| near 1 (Li, Xu & Zhang report that loss spikes facilitate it). The index
is the share of neuron pairs with |C_ij| > 0.95, compared before (quiet reference) and after
the spike (last snapshot after the peak). Like `low_frequency`, it describes the aftermath
and is never a verdict on its own.
"""

from __future__ import annotations

from forensics.analyze.evidence import Evidence, Finding, inconclusive
from forensics.analyze.rules._series import first, last

RULE = "condensation"
HINT = "no action needed; condensed first-layer features often come with better generalisation"
MIN_SHARE_GAIN = 0.05


def judge(ev: Evidence) -> Finding:
    ctx = ev.context
    before = first(ev, "condensation_share", None, ctx.onset)
    after = last(ev, "condensation_share", ctx.peak + 1, None)
    if before is None or after is None:
        return inconclusive(RULE, ev.skipped.get("condensation",
                                                 "no first-layer weights before and after the spike"))
    idx_before = ev.at("condensation_index", before[0])
    idx_after = ev.at("condensation_index", after[0])
    gain = after[1] - before[1]
    evidence = {"share_before": before[1], "share_after": after[1], "before_step": before[0],
                "after_step": after[0], "index_before": idx_before, "index_after": idx_after}
    thresholds = {"pair_cosine": 0.95, "min_share_gain": MIN_SHARE_GAIN}
    status = "fired" if gain >= MIN_SHARE_GAIN else "not_fired"
    return Finding(RULE, status, max(0.0, min(1.0, gain * 5)),
                   f"share of aligned first-layer neuron pairs {before[1]:.0%} → {after[1]:.0%} "
                   f"(steps {before[0]} → {after[0]})", HINT if status == "fired" else "",
                   evidence=evidence, thresholds=thresholds)
