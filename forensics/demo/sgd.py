"""Minibatch-SGD regression runs: a clean control and its twin with one planted corrupted batch.

The bad batch has its labels multiplied by LABEL_SCALE at a known step: the loss jumps because
of the data alone while the sharpness stays far below 2/eta (the `data` mechanism).
"""

import torch

from forensics.demo._common import deterministic, fresh_dir, mse_step, recorder
from forensics.zoo.models import mlp
from forensics.zoo.tasks import gaussian_regression

SEED = 0
MODEL = {"sizes": [5, 32, 32, 1], "activation": "tanh"}
N, BATCH, LR, STEPS = 1024, 32, 0.05, 600
BAD_STEP, LABEL_SCALE = 400, 10.0


def _train(name: str, out_dir, record: bool, bad_step: int | None) -> list[float]:
    with deterministic(SEED):
        x, y = gaussian_regression(N, MODEL["sizes"][0], seed=1)
        model = mlp(**MODEL)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        sampler = torch.Generator().manual_seed(3)
        rec = None
        if record:
            task = ({"mechanism": "data", "planted_bad_batch_step": bad_step,
                     "corruption": f"labels x{LABEL_SCALE:g}"} if bad_step is not None
                    else {"mechanism": None, "control": True})
            task.update({"train_points": N, "batch_size": BATCH})
            rec = recorder(model, opt, fresh_dir(out_dir, name), factory="forensics.zoo.models:mlp",
                           kwargs=MODEL, loss="mse", task=task, seed=SEED,
                           probe={"x": x[:256], "y": y[:256]},
                           detector={"preset": "robust", "signal": "both"},
                           probe_every=1)
        losses = []
        for step in range(STEPS):
            idx = torch.randint(0, N, (BATCH,), generator=sampler)
            xb, yb = x[idx], y[idx]
            if step == bad_step:
                yb = yb * LABEL_SCALE
            losses.append(mse_step(model, opt, rec, xb, yb))
        if rec is not None:
            rec.close()
    return losses


def train_bad_batch(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/bad_batch (labels x10 at step 400); return the per-step losses."""
    return _train("bad_batch", out_dir, record, BAD_STEP)


def train_clean_sgd(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/clean_sgd (the same run without the planted batch); return the losses."""
    return _train("clean_sgd", out_dir, record, None)
