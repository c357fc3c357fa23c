"""Rule `numerical`: the loss, a gradient, a weight or an optimizer moment became NaN or Inf.

A non-finite value is a spike of its own kind: whatever came before, the arithmetic broke.
The rule names where it first appears (loss, gradient, weight, moment) and at which step, and
the first tensor that went non-finite (a parameter's gradient, an optimizer moment, a weight
or the batch input) with whether the loss was still finite at that step: a finite loss with a
non-finite gradient points at the backward pass (e.g. a float16 overflow), a non-finite input
at the data.
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
    evidence = {"first_nonfinite": firsts, "first_kind": where, "first_step": step}
    message = f"non-finite {where} first at step {step} ({parts})"
    origin = _origin(ev)
    if origin:
        evidence.update(origin)
        tensors = origin["first_tensors"]
        loss = {1.0: "the loss was still finite", 0.0: "the loss was already non-finite"}.get(
            origin["loss_finite_at_first"], "the loss at that step is unknown")
        more = f" (and {len(tensors) - 1} more)" if len(tensors) > 1 else ""
        message += (f"; first non-finite tensor: {_words(tensors[0])}{more} at step "
                    f"{origin['first_tensor_step']}, when {loss}")
    return Finding(RULE, "fired", 1.0, message, HINT, evidence=evidence)


def _origin(ev: EvidenceView) -> dict:
    """The first captured step with a non-finite tensor, and those tensors in step order."""
    family = ev.family("first_nonfinite")
    if not family:
        return {}
    step = min(int(steps[0]) for steps, _ in family.values())
    order = {"state": 0, "param": 1, "batch": 2, "grad": 3}
    tensors = sorted((k for k, (steps, _) in family.items() if int(steps[0]) == step),
                     key=lambda k: (order.get(k.split(":", 1)[0].split("/", 1)[0], 4), k))
    return {"first_tensor_step": step, "first_tensors": tensors,
            "loss_finite_at_first": ev.at("loss_finite_at_first", step)}


def _words(key: str) -> str:
    """`grad:0.weight` -> "the gradient of 0.weight"; `state/exp_avg_sq:w` -> "exp_avg_sq of w"."""
    kind, _, name = key.partition(":")
    if kind.startswith("state/"):
        return f"the optimizer moment {kind.split('/', 1)[1]} of {name}"
    return {"grad": f"the gradient of {name}", "param": f"the weight {name}",
            "batch": f"the batch input {name!r}"}.get(kind, key)


SPEC = Mechanism(
    false_alarms=('0 of 6 pseudo-spikes; measured by `python -m forensics.analyzer.false_alarms` on the '
                  'shipped clean runs (clean_gd, clean_sgd, adam_control, large_batch; a pseudo-spike at '
                  'each captured snapshot after the first)'),
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
