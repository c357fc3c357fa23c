"""Engine `schedule`: what the training loop changed just before onset, from `steps/` alone.

Everyday causes of a spike are not curvature: a learning rate that jumps (a scheduler rebuilt on
resume, a misconfigured schedule) or an optimizer whose state was reset (weights restored,
optimizer state not: Adam's step counter restarts and v̂ is rebuilt from one gradient). Over the
`LOOKBACK` steps up to the onset this reads the recorded lr and optimizer step counter: the
largest one-step lr ratio lr_s/lr_{s−1} and its step, and a step where the counter went back,
with the counter before and after; and the update norm at onset over its median before.
Needs no snapshot and no model.
"""

from __future__ import annotations

import math

import numpy as np

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure import Skip

WITHOUT_SNAPSHOTS = True
LOOKBACK = 64  # crossings come 10–50 steps before the loss moves (DESIGN.md §5)
METRICS = {
    "lr_step_ratio": ("1", f"the largest lr_s/lr_(s−1) over the {LOOKBACK} steps up to onset"),
    "lr_step_ratio_at": ("step", "the step of that ratio"),
    "lr_before": ("lr", "the lr at the step before that ratio"),
    "lr_after": ("lr", "the lr at that step"),
    "counter_reset_at": ("step", f"the first update made from a reset optimizer state: the recorded "
                         f"step counter went back within the {LOOKBACK} steps up to onset"),
    "counter_before": ("count", "the optimizer step counter before the reset"),
    "counter_after": ("count", "the optimizer step counter after it"),
    "update_norm_ratio": ("1", "‖Δθ‖ at onset over the median ‖Δθ‖ of the 32 steps before the "
                          "look-back window"),
}


def _column(table, name):
    if name not in table.schema.names:
        return None
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=float)


def measure(ev: Evidence, scene) -> None:
    """lr jumps, optimizer counter resets and the update-norm ratio before onset."""
    ctx = ev.context
    table = scene.run.steps
    if table is None or table.num_rows < 2:
        raise Skip("no per-step records (steps/) to read the schedule from")
    s = np.asarray(table.column("step").to_numpy(zero_copy_only=False))
    order = np.argsort(s, kind="stable")
    s = s[order]
    lo = ctx.onset - LOOKBACK
    idx = [i for i in range(1, len(s)) if lo <= s[i] <= ctx.onset and s[i - 1] == s[i] - 1]
    row = {}
    lr = _column(table, "lr")
    if lr is not None and idx:
        lr = lr[order]
        ratios = [(lr[i] / lr[i - 1], i) for i in idx if lr[i - 1] > 0 and math.isfinite(lr[i])]
        if ratios:
            ratio, i = max(ratios)
            row.update(lr_step_ratio=ratio, lr_step_ratio_at=float(s[i]), lr_before=lr[i - 1],
                       lr_after=lr[i])
    counter = _column(table, "optimizer_step")
    if counter is not None and idx:
        counter = counter[order]
        resets = [i for i in idx if counter[i] < counter[i - 1]]
        if resets:
            i = resets[0]
            # rows hold the counter before their update: the first update from the fresh state
            # is the one `counter[i]` updates before row i
            row.update(counter_reset_at=float(s[i] - max(counter[i], 0)),
                       counter_before=counter[i - 1], counter_after=counter[i])
    upd = _column(table, "update_norm")
    if upd is not None:
        upd = upd[order]
        before = upd[(s < lo) & (s >= lo - 32) & np.isfinite(upd)]
        at = upd[s == ctx.onset]
        if before.size and at.size and np.median(before) > 0 and math.isfinite(at[0]):
            row["update_norm_ratio"] = float(at[0] / np.median(before))
    ev.add_many(ctx.onset, "schedule", row)
