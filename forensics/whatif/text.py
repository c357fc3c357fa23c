"""One sentence per counterfactual, for the terminal, the report and the spike page:
"with β₂ = 0.95 the spike does not occur: peak ×1.1 instead of ×5.2"."""

from __future__ import annotations

import math

_NAMES = {"beta2": "β₂", "beta1": "β₁", "eps": "ε", "lr": "lr", "weight_decay": "weight decay",
          "momentum": "momentum", "clip": "clipping at"}


def change_words(change: str) -> str:
    """`beta2=0.95+lr=x0.5` -> `β₂ = 0.95 and lr ×0.5`; `skip_batch=400` -> `batch 400 skipped`."""
    parts = []
    for part in change.split("+"):
        name, _, value = part.partition("=")
        if name == "skip_batch":
            parts.append(f"batch {value} skipped")
        elif name == "restore_optimizer":
            parts.append("the optimizer state restored")
        elif value == "hold":
            parts.append(f"{_NAMES.get(name, name)} held at the window's first value")
        elif value.startswith("x"):
            parts.append(f"{_NAMES.get(name, name)} ×{value[1:]}")
        else:
            parts.append(f"{_NAMES.get(name, name)} = {value}" if name != "clip" else f"clipping at {value}")
    return " and ".join(parts)


def ratio(x) -> str:
    """A peak ratio as text: ×5.2, ×∞ (non-finite), ? when unknown."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "?"
    return "×∞ (non-finite)" if math.isinf(x) else f"×{x:.3g}"


def sentence(change: str, peak_ratio, recorded_peak_ratio, spike_gone, recover_steps, *, visible=None) -> str:
    """The finding of one counterfactual, honest either way. `visible` (default: the recorded
    peak ratio reaches the criterion) False: the recorded curve shows no spike to remove."""
    from forensics.whatif.outcome import GONE_RATIO

    head = f"with {change_words(change)}"
    if visible is None:
        visible = recorded_peak_ratio is None or not recorded_peak_ratio < GONE_RATIO
    if not visible:
        return (f"{head}: cannot judge, the spike is not visible on the replayed curve (recorded peak "
                f"{ratio(recorded_peak_ratio)}, with the change {ratio(peak_ratio)})")
    if spike_gone:
        return (f"{head} the spike does not occur: peak {ratio(peak_ratio)} instead of "
                f"{ratio(recorded_peak_ratio)}")
    rec = ("never recovers in the window" if recover_steps is None
           else f"back below the criterion {recover_steps} steps after the onset")
    return (f"{head} the spike still occurs: peak {ratio(peak_ratio)} instead of "
            f"{ratio(recorded_peak_ratio)}, "
            f"{rec}")


def selfcheck(reproduced: bool, replay_error: float, tolerance: float, steps: list,
              diagnosis: str = "") -> str:
    """The self-check's line."""
    span = f"steps {steps[0]}..{steps[-1]}" if steps else "no steps"
    if reproduced:
        return f"replay reproduces the recording ({span}): error {replay_error:.2g} ≤ tolerance {tolerance:g}"
    return f"{diagnosis} ({span}; error {replay_error:.3g}); no counterfactual is claimed"
