"""Rule `condensation`: first-layer neurons align into fewer directions after the spike.

With ŵ_k = [w_k; b_k]/‖[w_k; b_k]‖ for each first-layer neuron and C = ŴŴᵀ, condensation
means many |C_ij| near 1 (Li, Xu & Zhang 2023, "Loss Spike in Training Neural Networks", arXiv
2305.12133, report that loss spikes facilitate it). The index
is the share of neuron pairs with |C_ij| > 0.95, compared before (quiet reference) and after
the spike (last snapshot after the peak). Like the frequency rule, it describes the aftermath
and is never a verdict on its own.
"""

from __future__ import annotations

from forensics.analyzer.evidence import EvidenceView, Finding, inconclusive
from forensics.analyzer.plots import Lines, NeuronCosines
from forensics.analyzer.rules._series import first, last
from forensics.analyzer.spec import Mechanism, Thresholds

RULE = "condensation"
HINT = "no action needed; condensed first-layer features often come with better generalisation"
T = Thresholds(
    pair_cosine=(0.95, "rationale: neuron pairs with |cos| > 0.95 count as aligned (the blocks of "
                 "|C_ij| ≈ 1 in Li, Xu & Zhang 2023, \"Loss Spike in Training Neural Networks\", "
                 "arXiv 2305.12133); measured by the engine"),
    min_share_gain=(0.05, "rationale: the share of aligned pairs must grow by 5 points from "
                    "before to after the spike"),
)


def judge(ev: EvidenceView) -> Finding:
    """The share of aligned first-layer neuron pairs before and after the spike."""
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
    thresholds = {"pair_cosine": T.pair_cosine, "min_share_gain": T.min_share_gain}
    status = "fired" if gain >= T.min_share_gain else "not_fired"
    return Finding(RULE, status, max(0.0, min(1.0, gain * 5)),
                   f"share of aligned first-layer neuron pairs {before[1]:.0%} → {after[1]:.0%} "
                   f"(steps {before[0]} → {after[0]})", HINT if status == "fired" else "",
                   evidence=evidence, thresholds=thresholds)


SPEC = Mechanism(
    false_alarms=('not measured: an aftermath rule needs steps after a spike, which a pseudo-spike on a '
                  'clean run lacks'),
    name=RULE, role="aftermath", needs=("condensation",), judge=judge, hint=HINT, thresholds=T,
    summary=f"the share of first-layer neuron pairs with |cos| > {T.pair_cosine:g} grows by ≥ "
            f"{T.min_share_gain:g} from before the spike to after it (never a verdict)",
    badge="green", colour="#bcbd22",
    panel=(NeuronCosines("condensation_index",
                         "cosine similarity of first-layer neurons [w; b]; neurons ordered by the "
                         "'after' matrix's leading eigenvector, so aligned groups show as blocks"),
           Lines("condensation indices",
                 {"condensation_share": f"share of aligned pairs (|cos| > {T.pair_cosine:g})",
                  "condensation_index": "λ_max(C)/m"},
                 y_title="index", from_first=True, height=180)),
)
