"""Catapults in SGD: the rank-2 task x1*x2 in R^100 at batch 5 versus batch 100, same lr.

Zhu et al. (seed 001): at a fixed lr, small-batch SGD keeps crossing the critical lr of its
batch kernels and catapults, which aligns the net's AGOP with the true diag(1, 1, 0, ...);
the large-batch twin trains quietly and learns a far less aligned AGOP. A fixed probe batch
tells real spikes from minibatch noise.
"""

import torch

from forensics.demo._common import deterministic, fresh_dir, mse_step, recorder
from forensics.zoo.models import two_layer
from forensics.zoo.tasks import rank2

SEED = 0
MODEL = {"width": 32, "d": 100, "activation": "relu"}
N, LR, STEPS, PROBE = 1000, 3.0, 4001, 256  # 4001 steps: step 4000 is a baseline snapshot
BATCH = {"small_batch": 5, "large_batch": 100}


def _train(name: str, out_dir, record: bool) -> list[float]:
    with deterministic(SEED):
        x, y = rank2(N, MODEL["d"], seed=1)
        model = two_layer(**MODEL)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        sampler = torch.Generator().manual_seed(3)
        batch = BATCH[name]
        rec = None
        if record:
            task = {"mechanism": "catapult" if name == "small_batch" else None,
                    "true_agop": "x1x2", "train_points": N, "batch_size": batch,
                    "twin": "large_batch" if name == "small_batch" else "small_batch",
                    "final_step": STEPS - 1}
            rec = recorder(model, opt, fresh_dir(out_dir, name),
                           factory="forensics.zoo.models:two_layer", kwargs=MODEL, loss="mse",
                           task=task, seed=SEED, probe={"x": x[:PROBE], "y": y[:PROBE]},
                           # the previous flat rule: the trend-aware default also flags a x4 probe rise
                           # at step 353 whose analyzer verdict is sharpness, not catapult; the run's
                           # first captured spike is meant to be the catapult at 405
                           detector={"preset": "robust_flat", "signal": "probe"}, probe_every=1,
                           ring_size=3, tail=2, baseline_every=4000, max_spikes=2, steps_chunk=1024)
        losses = []
        for _ in range(STEPS):
            idx = torch.randint(0, N, (batch,), generator=sampler)
            losses.append(mse_step(model, opt, rec, x[idx], y[idx]))
        if rec is not None:
            rec.close()
    return losses


def train_small(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/small_batch (batch 5); return the per-step losses."""
    return _train("small_batch", out_dir, record)


def train_large(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/large_batch (batch 100); return the per-step losses."""
    return _train("large_batch", out_dir, record)
