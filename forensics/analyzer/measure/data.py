"""Engine `data`: the spike batch's loss against its neighbours', all at the onset weights.

Evaluates L(θ_onset; batch_s) for the onset batch and every other recorded batch in the
window (at most `max_neighbors`, nearest first). Full-batch runs have identical batches,
so the ratio is 1 there by construction; `batches_identical` records which regime the run is
in (full batch or minibatches), for any rule that needs to know.
"""

from __future__ import annotations

import numpy as np
import torch

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure import Skip

MAX_NEIGHBORS = 8
METRICS = {
    "batch_loss": ("loss", "at the onset weights: the onset batch's loss"),
    "neighbor_loss_median": ("loss", f"at the onset weights: the median loss of up to "
                             f"{MAX_NEIGHBORS} neighbouring recorded batches"),
    "neighbor_count": ("count", "neighbouring batches evaluated"),
    "batch_loss_ratio": ("1", "batch_loss / neighbor_loss_median"),
    "batches_identical": ("0/1", "1 when every neighbouring batch equals the onset batch (one "
                          "fixed, full batch), 0 when they differ (minibatches)"),
}



def measure(ev: Evidence, scene) -> None:
    """The onset batch's loss against its recorded neighbours', at the onset weights."""
    ctx = ev.context
    replay = scene.require_replay()
    onset = ctx.onset
    if onset not in {i.step for i in scene.run.snapshots}:
        raise Skip(f"the onset step {onset} was not captured")
    others = sorted((i.step for i in scene.run.snapshots if i.step != onset
                     and abs(i.step - onset) <= 64), key=lambda s: (abs(s - onset), s))
    others = others[:MAX_NEIGHBORS]
    if not others:
        raise Skip("no neighbouring batches were recorded")
    params = scene.params(onset)
    own_batch = scene.batch(onset)
    same = all(all(torch.equal(own_batch[k], b[k]) for k in own_batch if k in b)
               for b in (scene.batch(s) for s in others))
    with torch.no_grad():
        own = float(replay.loss(params, scene.batch(onset)))
        losses = [float(replay.loss(params, scene.batch(s))) for s in others]
    median = float(np.median(losses))
    ratio = own / median if median > 0 else float("inf")
    ev.add_many(onset, "data", {"batch_loss": own, "neighbor_loss_median": median,
                                "neighbor_count": len(losses), "batch_loss_ratio": ratio,
                                "batches_identical": float(same)})
