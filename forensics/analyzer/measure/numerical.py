"""Engine `numerical`: counts non-finite values in the loss, gradients, weights and moments.

Reads the recorded per-step losses from `steps/` over the whole spike and every selected
snapshot's tensors; needs no model.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from forensics.analyzer.evidence import Evidence


WITHOUT_SNAPSHOTS = True  # the recorded losses in steps/ still say whether the spike went non-finite
METRICS = {
    "nonfinite_loss": ("count", "non-finite loss: per snapshot 0/1, and 1 at every step of steps/ "
                       "in the spike whose recorded loss is NaN/Inf"),
    "nonfinite_grad": ("count", "non-finite values among the snapshot's gradients"),
    "nonfinite_param": ("count", "non-finite values among the snapshot's weights"),
    "nonfinite_state": ("count", "non-finite values among the snapshot's optimizer moments"),
}


def _count(tensors) -> int:
    return int(sum((~torch.isfinite(t)).sum().item() for t in tensors if t.is_floating_point()))


def measure(ev: Evidence, scene) -> None:
    """Non-finite counts per selected snapshot, and non-finite recorded losses in the spike."""
    ctx = ev.context
    steps = scene.run.steps
    if steps is not None and steps.num_rows:
        s = np.asarray(steps.column("step").to_numpy(zero_copy_only=False))
        v = np.asarray(steps.column("loss").to_numpy(zero_copy_only=False), dtype=float)
        hi = ctx.end if ctx.end is not None else s.max()
        for step, loss in zip(s[(s >= ctx.onset) & (s <= hi)], v[(s >= ctx.onset) & (s <= hi)]):
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
