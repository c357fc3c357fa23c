"""Adam beta2 lag, and its control: a small MLP fit to a very low loss with full-batch Adam.

The beta2-lag seed (004): once g^2 << v, v decays like beta2^t, the preconditioner 1/(sqrt(v)+eps)
grows, lambda_max(P^-1 H) climbs past the stability limit and the loss spikes. The control
differs in one setting, eps = 1e-3 instead of 1e-8: eps caps 1/P, lambda_max(P^-1 H) stays
below the limit, and the loss falls smoothly although g^2/v is just as small.
"""

import torch

from forensics.demo._common import deterministic, fresh_dir, mse_step, recorder
from forensics.zoo.models import mlp
from forensics.zoo.tasks import gaussian_regression

SEED = 0
MODEL = {"sizes": [5, 32, 32, 1], "activation": "tanh"}
N, LR, BETAS, STEPS = 64, 1e-3, (0.9, 0.999), 3437  # ends before the aftershock that opens at 3437
EPS = {"adam_beta2_lag": 1e-8, "adam_control": 1e-3}


def _train(name: str, out_dir, record: bool) -> list[float]:
    with deterministic(SEED):
        x, y = gaussian_regression(N, MODEL["sizes"][0], seed=1)
        model = mlp(**MODEL)
        opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS[name])
        rec = None
        if record:
            task = ({"mechanism": "adam_beta2_lag", "full_batch": True} if name == "adam_beta2_lag"
                    else {"mechanism": None, "control_of": "adam_beta2_lag",
                          "differs": {"eps": [EPS["adam_beta2_lag"], EPS[name]]}, "full_batch": True})
            rec = recorder(model, opt, fresh_dir(out_dir, name), factory="forensics.zoo.models:mlp",
                           kwargs=MODEL, loss="mse", task=task, seed=SEED, ring_size=4, tail=4,
                           baseline_every=3000, max_spikes=1, steps_chunk=1024)
        losses = [mse_step(model, opt, rec, x, y) for _ in range(STEPS)]
        if rec is not None:
            rec.close()
    return losses


def train_lag(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/adam_beta2_lag (eps = 1e-8); return the per-step losses."""
    return _train("adam_beta2_lag", out_dir, record)


def train_control(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/adam_control (eps = 1e-3, nothing else changed); return the losses."""
    return _train("adam_control", out_dir, record)
