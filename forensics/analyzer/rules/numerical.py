"""Rule `numerical`: the loss, a gradient, a weight or an optimizer moment became NaN or Inf.

A non-finite value is a spike of its own kind: whatever came before, the arithmetic broke.
The rule names where it first appears (loss, gradient, weight, moment) and at which step.
"""

from __future__ import annotations

from forensics.analyzer.evidence import EvidenceView, Finding
from forensics.analyzer.plots import Counts
from forensics.analyzer.spec import Mechanism, Thresholds

RULE = "numerical"
HINT = ("find the first non-finite tensor (see evidence); lower the lr, clip gradients, raise "
        "Adam's eps, or use a loss-scaler / higher precision; skip batches with non-finite loss")

_KINDS = ("nonfinite_loss", "nonfinite_grad", "nonfinite_param", "nonfinite_state")


def judge(ev: EvidenceView) -> Finding:
    """Where and when the first non-finite value appears."""
    firsts = {}
    for kind in _KINDS:
        steps, values = ev.series(kind)
        hit = steps[values > 0]
        if hit.size:
            firsts[kind.removeprefix("nonfinite_")] = int(hit.min())
    if not firsts and ev.context.nonfinite:
        firsts["loss"] = ev.context.peak
    if not firsts:
        if not any(ev.has(k) for k in _KINDS):
            return Finding(RULE, "not_fired", 0.0, "all recorded losses are finite",
                           evidence={"checked": "loss only"})
        return Finding(RULE, "not_fired", 0.0,
                       "loss, gradients, weights and moments are finite in every snapshot")
    where, step = min(firsts.items(), key=lambda kv: (kv[1], _KINDS.index("nonfinite_" + kv[0])))
    parts = ", ".join(f"{k} at step {s}" for k, s in sorted(firsts.items(), key=lambda kv: kv[1]))
    return Finding(RULE, "fired", 1.0,
                   f"non-finite {where} first at step {step} ({parts})", HINT,
                   evidence={"first_nonfinite": firsts, "first_kind": where, "first_step": step})


SPEC = Mechanism(
    name=RULE, role="ascent", needs=("numerical",), judge=judge, hint=HINT, thresholds=Thresholds(),
    summary="any non-finite loss, gradient, weight or optimizer moment in the spike",
    badge="red", colour="#e377c2", precedence=0,
    precedence_note="once a value is NaN/Inf nothing else can be measured on it",
    panel=(Counts("non-finite values per snapshot",
                  {"nonfinite_loss": "loss", "nonfinite_grad": "gradients",
                   "nonfinite_param": "weights", "nonfinite_state": "optimizer state"},
                  all_zero="every snapshot of this spike is finite (0 non-finite values)"),),
    counterfactuals=("lr=x0.1", "lr=hold+clip=0.1"),
)
