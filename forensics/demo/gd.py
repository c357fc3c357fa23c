"""Full-batch GD runs on the 1-D grid: a clean small-lr control and an lr blow-up to non-finite loss.

`numerical` trains at a stable lr, then grows the lr by GROWTH per step (an lr range test left
running) until the loss overflows; the recorder must keep the non-finite steps, not crash.
"""

import math

import torch

from forensics.demo._common import deterministic, fresh_dir, mse_step, recorder
from forensics.zoo.models import mlp
from forensics.zoo.tasks import grid_1d

SEED = 0
MODEL = {"sizes": [1, 32, 32, 1], "activation": "tanh"}
N = 128
CLEAN_LR, CLEAN_STEPS = 0.02, 301
BLOWUP_LR, BLOWUP_START, GROWTH, AFTER_NONFINITE, MAX_STEPS = 0.05, 100, 1.15, 3, 400


def train_clean_gd(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/clean_gd (eta * lambda_max stays well below 2); return the losses."""
    with deterministic(SEED):
        x, y = grid_1d(N)
        model = mlp(**MODEL)
        opt = torch.optim.SGD(model.parameters(), lr=CLEAN_LR)
        rec = None
        if record:
            rec = recorder(model, opt, fresh_dir(out_dir, "clean_gd"),
                           factory="forensics.zoo.models:mlp", kwargs=MODEL, loss="mse", seed=SEED,
                           baseline_every=100, task={"mechanism": None, "control": True, "grid": "uniform-1d",
                                 "full_batch": True})
        losses = [mse_step(model, opt, rec, x, y) for _ in range(CLEAN_STEPS)]
        if rec is not None:
            rec.close()
    return losses


def train_numerical(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/numerical (lr x1.15 per step from step 100 until the loss is non-finite)."""
    with deterministic(SEED):
        x, y = grid_1d(N)
        model = mlp(**MODEL)
        opt = torch.optim.SGD(model.parameters(), lr=BLOWUP_LR)
        rec = None
        if record:
            task = {"mechanism": "numerical", "grid": "uniform-1d", "full_batch": True,
                    "lr_growth_from_step": BLOWUP_START, "lr_growth_per_step": GROWTH}
            rec = recorder(model, opt, fresh_dir(out_dir, "numerical"),
                           factory="forensics.zoo.models:mlp", kwargs=MODEL, loss="mse",
                           task=task, seed=SEED)
        losses, left = [], None
        for step in range(MAX_STEPS):
            if step >= BLOWUP_START:
                opt.param_groups[0]["lr"] = BLOWUP_LR * GROWTH ** (step - BLOWUP_START)
            losses.append(mse_step(model, opt, rec, x, y))
            if left is None and not math.isfinite(losses[-1]):
                left = AFTER_NONFINITE
            elif left is not None:
                left -= 1
                if left == 0:
                    break
        if rec is not None:
            rec.close()
    return losses
