"""Rule `numerical`: the loss, a gradient, a weight or an optimizer moment became NaN or Inf.

A non-finite value is a spike of its own kind: whatever came before, the arithmetic broke.
The rule names where it first appears (loss, gradient, weight, moment) and at which step, and
the first tensor that went non-finite (a parameter's gradient, an optimizer moment, a weight
or the batch input) with whether the loss was still finite at that step: a finite loss with a
non-finite gradient points at the backward pass (e.g. a float16 overflow), a non-finite input
at the data.

float16 (a GradScaler's columns in steps/, or float16 weights): the scaler's ordinary skips
(its calibration from the initial scale, any later skip whose loss was finite) are
not non-finite values of the spike; at the first step that is, the replayed forward pass names
the first module whose output passes the float16 maximum 65504, and the loss scale then says
whether the scaler could still help (above its floor the overflow is in the forward pass, which
the scale does not touch; at or below it even unscaled gradients overflow).
"""

from __future__ import annotations

from forensics.analyzer.evidence import EvidenceView, Finding
from forensics.analyzer.measure.numerical import FP16_MAX, SCALE_FLOOR
from forensics.analyzer.plots import Counts, Limit, Lines, Row
from forensics.analyzer.rules._series import last
from forensics.analyzer.spec import Mechanism, Thresholds

RULE = "numerical"
HINT = ("find the first non-finite tensor (see evidence); lower the lr, clip gradients, raise "
        "Adam's eps, or use a loss-scaler / higher precision; skip batches with non-finite loss")
T = Thresholds(
    fp16_max=(FP16_MAX, "the largest finite float16 value (IEEE 754 binary16); larger outputs are inf"),
    scale_floor=(SCALE_FLOOR, "the smallest loss scale of DeepSpeed's and Megatron-LM's dynamic loss "
                 "scalers (min_loss_scale = 1); below it the scaler shrinks gradients instead of "
                 "protecting them from underflow"),
)

_KINDS = ("nonfinite_loss", "nonfinite_grad", "nonfinite_param", "nonfinite_state")


def judge(ev: EvidenceView) -> Finding:
    """Where and when the first non-finite value appears, and a float16 overflow's module."""
    firsts = {}
    for kind in _KINDS:
        steps, values = ev.series(kind)
        hit = steps[values > 0]
        if hit.size:
            firsts[kind.removeprefix("nonfinite_")] = int(hit.min())
    if not firsts and ev.context.nonfinite:
        firsts["loss"] = ev.context.peak
    calibration = _calibration(ev)
    if not firsts:
        if not any(ev.has(k) for k in _KINDS):
            return Finding(RULE, "not_fired", 0.0, "all recorded losses are finite",
                           evidence={"checked": "loss only"})
        return Finding(RULE, "not_fired", 0.0,
                       "loss, gradients, weights and moments are finite in every snapshot" + calibration)
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
    fp16 = _fp16(ev)
    hint = HINT
    if fp16:
        evidence["fp16_overflow"] = fp16
        message = f"{fp16['message']}; {message}"
        hint = (f"keep {fp16['where']} out of float16: train in bfloat16 (float32's range), or run it "
                "in float32 (torch.autocast(..., enabled=False) around it); normalise the targets or "
                f"activations (outputs reach {fp16['value']:.3g}); lower the lr")
    return Finding(RULE, "fired", 1.0, message + calibration, hint, evidence=evidence,
                   thresholds={"fp16_max": T.fp16_max, "scale_floor": T.scale_floor})


def _calibration(ev: EvidenceView) -> str:
    n = ev.at("amp_calibration_skips", ev.context.onset)
    first = ev.at("amp_first_ok", ev.context.onset)
    if not n:
        return ""
    upto = f" (steps up to {first - 1:.0f})" if first is not None else ""
    return (f"; the GradScaler's {n:.0f} calibration skip(s){upto} are its ordinary search for a scale "
            "and not counted")


def _fp16(ev: EvidenceView) -> dict | None:
    """The first module past the float16 maximum at the replayed step, and the loss scale then."""
    family = ev.family("fp16_overflow")
    if not family:
        return None
    module, (steps, values) = next(iter(family.items()))
    step, value = int(steps[0]), float(values[0])
    output = ev.at("fp16_output_layer", step) == 1.0
    where = f"module `{module}`" + (" (the model's output layer)" if output else "")
    scale = last(ev, "loss_scale", None, step)
    evidence = {"module": module, "step": step, "value": value, "output_layer": output,
                "modules_over": ev.at("fp16_overflow_modules", step), "where": where,
                "loss_scale": scale[1] if scale else None,
                "scale_at_floor": None if scale is None else scale[1] <= T.scale_floor}
    if scale is None:
        said = "no loss scale recorded"
    elif scale[1] <= T.scale_floor:
        said = (f"the loss scale was {scale[1]:.3g}, at or below its floor {T.scale_floor:g} (the scaler had "
                "shrunk it that far: gradients overflow float16 even unscaled), so it cannot help")
    else:
        said = (f"the loss scale was {scale[1]:.3g}, above its floor {T.scale_floor:g}: the overflow is in "
                "the forward pass, which the loss scale does not touch")
    losses, values_ = ev.series("nonfinite_loss")
    first_loss = int(losses[values_ > 0].min()) if (values_ > 0).any() else None
    prior = last(ev, "fp16_max_output", None, step - 1)
    evidence.update(first_nonfinite_loss=first_loss, before=prior)
    when = (f"the loss is first non-finite at step {first_loss}; replayed at step {step}, the first captured "
            f"step past it" if first_loss is not None and first_loss < step else f"at step {step}")
    margin = (f" (at step {prior[0]}, the last captured before: {prior[1]:.3g})" if prior else "")
    evidence["message"] = (f"float16 overflow in the activations of {where}: {when}, its |output| reaches "
                           f"{value:.3g} > {T.fp16_max:g}{margin}; {said}")
    return evidence


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
    false_alarms=("0 of 6 pseudo-spikes (`python -m forensics.analyzer.false_alarms` on clean_gd, "
                  "clean_sgd, adam_control, large_batch: one at each captured snapshot after the "
                  "first); and 0 at every 5th step and every snapshot step of those runs as a "
                  "pretend onset (tests/test_everyday_rules_planted.py)"),
    name=RULE, role="ascent", needs=("numerical",), judge=judge, hint=HINT, thresholds=T,
    summary="any non-finite loss, gradient, weight or optimizer moment in the spike (a GradScaler's "
            f"ordinary skips apart); in float16, the first module whose output passes {FP16_MAX:g} "
            f"and whether the loss scale was at its floor ({SCALE_FLOOR:g})",
    badge="red", colour="#e377c2", precedence=0,
    precedence_note="once a value is NaN/Inf nothing else can be measured on it",
    panel=(Counts("non-finite values per snapshot",
                  {"nonfinite_loss": "loss", "nonfinite_grad": "gradients",
                   "nonfinite_param": "weights", "nonfinite_state": "optimizer state",
                   "nonfinite_grad_skipped": "gradients at ordinary scaler skips"},
                  all_zero="every snapshot of this spike is finite (0 non-finite values)"),
           Row(Lines("GradScaler loss scale over the window", {"loss_scale": "loss scale"},
                     y_title="scale (log)", log_y=True,
                     limits=(Limit(f"floor {SCALE_FLOOR:g}", value=SCALE_FLOOR),)),
               Lines("steps the scaler skipped", {"amp_skipped": "skipped (found inf/NaN)"},
                     y_title="0/1"))),
    counterfactuals=("lr=x0.1", "lr=hold+clip=0.1"),
)
