"""Low-frequency descent: 1-D regression on a uniform grid whose EoS spike lives in low frequencies.

Li, Xu, Zhang (seed 000) with the F-principle (Xu et al.): the target has a low (k=1) and a
high (k=12) frequency part; a tanh MLP under full-batch GD at lr past the stability limit
spikes, and both the spike's excess residual and its rapid descent sit in the low DFT bins.
"""

import torch

from forensics.demo._common import deterministic, fresh_dir, mse_step, recorder
from forensics.zoo.models import mlp
from forensics.zoo.tasks import grid_1d

NAME = "low_frequency"
SEED = 0
MODEL = {"sizes": [1, 32, 32, 1], "activation": "tanh"}
N, LR, STEPS = 128, 0.1, 400
LOW, HIGH = ((1, 1.0),), ((12, 0.3),)


def train(out_dir, *, record: bool = True) -> list[float]:
    """Record the run into out_dir/low_frequency; return the per-step losses."""
    with deterministic(SEED):
        x, y = grid_1d(N, low=LOW, high=HIGH)
        model = mlp(**MODEL)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        rec = None
        if record:
            task = {"mechanism": "low_frequency", "grid": "uniform-1d", "grid_points": N,
                    "low_k": [k for k, _ in LOW], "high_k": [k for k, _ in HIGH],
                    "full_batch": True}
            rec = recorder(model, opt, fresh_dir(out_dir, NAME), factory="forensics.zoo.models:mlp",
                           kwargs=MODEL, loss="mse", task=task, seed=SEED)
        losses = [mse_step(model, opt, rec, x, y) for _ in range(STEPS)]
        if rec is not None:
            rec.close()
    return losses
