"""Rule `data`: the spike batch alone explains the jump.

At the onset weights θ_t, evaluate the loss of batch t and of the neighbouring recorded
batches. A curvature instability makes θ_t bad for every batch (ratio ≈ 1); a corrupted or
out-of-distribution batch makes only batch t bad (ratio ≫ 1) while the weights are fine.
"""

from __future__ import annotations

from forensics.analyze.evidence import Evidence, Finding, inconclusive

RULE = "data"
HINT = ("inspect the batch saved in the onset snapshot (batch/*); skip or fix it, or add loss "
        "filtering (skip steps whose loss is far above the running median)")
MIN_RATIO = 3.0


def judge(ev: Evidence) -> Finding:
    ctx = ev.context
    ratio = ev.at("batch_loss_ratio", ctx.onset)
    if ratio is None:
        return inconclusive(RULE, ev.skipped.get("data", "no neighbouring batches were recorded"))
    evidence = {
        "batch_loss": ev.at("batch_loss", ctx.onset),
        "neighbor_loss_median": ev.at("neighbor_loss_median", ctx.onset),
        "neighbor_count": ev.at("neighbor_count", ctx.onset),
        "ratio": ratio,
    }
    thresholds = {"min_ratio": MIN_RATIO}
    if ratio >= MIN_RATIO:
        score = min(1.0, 0.6 + 0.1 * (ratio / MIN_RATIO))
        return Finding(RULE, "fired", score,
                       f"at the onset weights, batch {ctx.onset} has loss ×{ratio:.3g} the median "
                       f"of {int(evidence['neighbor_count'] or 0)} neighbouring batches: the "
                       f"batch, not the weights, is off", HINT,
                       evidence=evidence, thresholds=thresholds)
    return Finding(RULE, "not_fired", 0.0,
                   f"at the onset weights, batch {ctx.onset} is as hard as its neighbours "
                   f"(×{ratio:.3g}): the weights, not the batch, are off",
                   evidence=evidence, thresholds=thresholds)
