"""Engine `numerical`: counts non-finite values in the loss, gradients, weights and moments.

Reads the recorded per-step losses from `steps/` over the whole spike and every selected
snapshot's tensors; needs no model. To name where a NaN/Inf started, it also scans every
captured snapshot of the spike's window (at most `MAX_SCAN`, in step order) for the first
one holding a non-finite tensor, and records each such tensor there as
`first_nonfinite@<kind>:<name>` (kind: state/<moment>, param, batch, grad; the value is its
count of non-finite values) with `loss_finite_at_first`, whether that step's recorded loss
was still finite.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from forensics.analyzer.evidence import Evidence


MAX_SCAN = 64
WITHOUT_SNAPSHOTS = True  # the recorded losses in steps/ still say whether the spike went non-finite
METRICS = {
    "nonfinite_loss": ("count", "non-finite loss: per snapshot 0/1, and 1 at every step of steps/ "
                       "in the spike whose recorded loss is NaN/Inf"),
    "nonfinite_grad": ("count", "non-finite values among the snapshot's gradients"),
    "nonfinite_param": ("count", "non-finite values among the snapshot's weights"),
    "nonfinite_state": ("count", "non-finite values among the snapshot's optimizer moments"),
    "first_nonfinite@*": ("count", "at the first captured step with a non-finite tensor: its "
                          "non-finite values, one metric per tensor, `<kind>:<name>` with kind "
                          "state/<moment>, param, batch or grad"),
    "loss_finite_at_first": ("0/1", "1 when the recorded loss of that first step was still finite"),
}


def _count(tensors) -> int:
    return int(sum((~torch.isfinite(t)).sum().item() for t in tensors if t.is_floating_point()))


def _nonfinite_tensors(snap) -> dict[str, float]:
    """`<kind>:<name>` -> non-finite count for each tensor of the snapshot that has any, in the
    order a step makes them: moments and weights (from the previous update), the batch, then
    the gradients of this step."""
    groups = [(f"state/{k}", d) for k, d in snap.state.items()] + \
        [("param", snap.params), ("batch", snap.batch), ("grad", snap.grads)]
    out = {}
    for kind, tensors in groups:
        for name, t in tensors.items():
            if t.is_floating_point():
                n = int((~torch.isfinite(t)).sum())
                if n:
                    out[f"{kind}:{name}"] = float(n)
    return out


def _first_origin(ev: Evidence, scene) -> None:
    """The first captured snapshot of the window with a non-finite tensor, named tensor by tensor."""
    if not scene.window.steps:
        return
    lo, hi = scene.window.steps[0], scene.window.steps[-1]
    steps = sorted({i.step for i in scene.run.snapshots if lo <= i.step <= hi})[:MAX_SCAN]
    for step in steps:
        snap = scene.snapshot(step)
        found = _nonfinite_tensors(snap)
        if found:
            loss = float(snap.meta.get("loss", float("nan")))
            ev.add_many(step, "numerical", {**{f"first_nonfinite@{k}": v for k, v in found.items()},
                                            "loss_finite_at_first": float(math.isfinite(loss))})
            return


def measure(ev: Evidence, scene) -> None:
    """Non-finite counts per selected snapshot, and non-finite recorded losses in the spike."""
    ctx = ev.context
    steps = scene.run.steps
    if steps is not None and steps.num_rows:
        s = np.asarray(steps.column("step").to_numpy(zero_copy_only=False))
        v = np.asarray(steps.column("loss").to_numpy(zero_copy_only=False), dtype=float)
        hi = ctx.end if ctx.end is not None else s.max()
        for step, loss in zip(s[(s >= ctx.onset) & (s <= hi)], v[(s >= ctx.onset) & (s <= hi)], strict=True):
            if not math.isfinite(loss):
                ev.add(int(step), "numerical", "nonfinite_loss", 1.0)
    for step in scene.window.steps:
        snap = scene.snapshot(step)
        states = [t for d in snap.state.values() for t in d.values()]
        ev.add_many(step, "numerical", {
            "nonfinite_grad": _count(snap.grads.values()),
            "nonfinite_param": _count(snap.params.values()),
            "nonfinite_state": _count(states),
            "nonfinite_loss": float(not math.isfinite(float(snap.meta.get("loss", 0.0)))),
        })
    _first_origin(ev, scene)
