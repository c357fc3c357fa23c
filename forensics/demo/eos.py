"""Edge of stability / lower-loss-as-sharper: a tanh MLP under full-batch GD at a constant lr.

Cohen et al. 2021; Li, Xu, Zhang (seed 000). Progressive sharpening raises lambda_max of the
full-batch Hessian while the loss falls; once eta * lambda_max passes 2 the top direction grows,
the loss spikes, and training settles where eta * lambda_max < 2 again.
"""

import torch

from forensics.demo._common import deterministic, fresh_dir, mse_step, recorder
from forensics.zoo.models import mlp
from forensics.zoo.tasks import gaussian_regression

NAME = "eos"
SEED = 0
MODEL = {"sizes": [5, 32, 32, 1], "activation": "tanh"}
N, LR, STEPS = 64, 0.15, 260


def train(out_dir, *, record: bool = True) -> list[float]:
    """Record the run into out_dir/eos; return the per-step losses."""
    with deterministic(SEED):
        x, y = gaussian_regression(N, MODEL["sizes"][0], seed=1)
        model = mlp(**MODEL)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        rec = None
        if record:
            rec = recorder(model, opt, fresh_dir(out_dir, NAME), factory="forensics.zoo.models:mlp",
                           kwargs=MODEL, loss="mse", seed=SEED,
                           task={"mechanism": "sharpness", "full_batch": True, "stability_limit": 2 / LR},
                           baseline_every=50, ring_size=8)
        losses = [mse_step(model, opt, rec, x, y) for _ in range(STEPS)]
        if rec is not None:
            rec.close()
    return losses
