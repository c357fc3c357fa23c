"""Rule `data`: the spike batch alone explains the jump.

At the onset weights θ_t, evaluate the loss of batch t and of the neighbouring recorded
batches. A curvature instability makes θ_t bad for every batch (ratio ≈ 1); a corrupted or
out-of-distribution batch makes only batch t bad (ratio ≫ 1) while the weights are fine.
"""

from __future__ import annotations

from forensics.analyzer.evidence import EvidenceView, Finding, inconclusive
from forensics.analyzer.plots import Bars, Limit
from forensics.analyzer.spec import Mechanism, Thresholds

RULE = "data"
HINT = ("inspect the batch saved in the onset snapshot (batch/*); skip or fix it, or add loss "
        "filtering (skip steps whose loss is far above the running median)")
T = Thresholds(
    min_ratio=(3.0, "rationale: at the same weights a curvature instability makes every batch bad "
               "(ratio ≈ 1); a batch 3× worse than the median of its neighbours is off on its own"),
)


def judge(ev: EvidenceView) -> Finding:
    """The onset batch's loss against its neighbours' at the same onset weights."""
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
    thresholds = {"min_ratio": T.min_ratio}
    if ratio >= T.min_ratio:
        score = min(1.0, 0.6 + 0.1 * (ratio / T.min_ratio))
        return Finding(RULE, "fired", score,
                       f"at the onset weights, batch {ctx.onset} has loss ×{ratio:.3g} the median "
                       f"of {int(evidence['neighbor_count'] or 0)} neighbouring batches: the "
                       f"batch, not the weights, is off", HINT,
                       evidence=evidence, thresholds=thresholds)
    return Finding(RULE, "not_fired", 0.0,
                   f"at the onset weights, batch {ctx.onset} is as hard as its neighbours "
                   f"(×{ratio:.3g}): the weights, not the batch, are off",
                   evidence=evidence, thresholds=thresholds)


SPEC = Mechanism(
    name=RULE, role="ascent", needs=("data",), judge=judge, hint=HINT, thresholds=T,
    summary=f"the onset batch's loss at the onset weights ≥ {T.min_ratio:g}× the median of the "
            "neighbouring recorded batches' losses at the same weights",
    badge="orange", colour="#8c564b", precedence=10,
    precedence_note="its test is causal: at the same onset weights only the spike batch is bad, "
                    "so the weights (and their curvature) were fine for the rest of the data",
    panel=(Bars("the spike batch's loss against its neighbours, at the onset weights",
                {"batch_loss": "spike batch (step {onset})",
                 "neighbor_loss_median": "neighbours (median of {neighbor_count:.0f})"},
                y_title="loss at onset weights",
                limits=(Limit(f"{T.min_ratio:g}× neighbours", metric="neighbor_loss_median",
                              scale=T.min_ratio),)),),
    counterfactuals=("skip_batch=onset",),
)
