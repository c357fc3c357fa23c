"""Catapult: a wide two-layer net under full-batch GD whose lr is raised past eta_crit of its current NTK.

Lewkowycz et al. 2020; Zhu et al. ("multiple catapults with increasing learning rates", seed 001).
With torch's mean MSE, L = (1/n)||F - y||^2, so GD on the outputs is F <- F - (2 eta / n) K r and
the linear dynamics diverge along K's top eigenvector once eta > eta_crit = n / lambda_max(K).
Steps 0..SWITCH-1 train at 0.5 eta_crit (history for the detector); at SWITCH the lr becomes
MULT * eta_crit of the kernel at that moment, 1 < MULT < 2: the loss grows along the top
eigendirection, lambda_max(K) falls, and the loss comes back (the catapult).
"""

import torch

from forensics.demo._common import deterministic, fresh_dir, mse_step, recorder
from forensics.zoo.models import two_layer
from forensics.zoo.tasks import rank2

NAME = "catapult"
SEED = 0
MODEL = {"width": 128, "d": 10, "activation": "relu"}
N, SWITCH, MULT, STEPS = 64, 30, 1.3, 80


def ntk_lambda_max(model, x: torch.Tensor) -> float:
    """lambda_max of K = J J^T over the batch outputs, from the dense Jacobian (n x p)."""
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())

    def outputs(*ps):
        return torch.func.functional_call(model, dict(zip(names, ps, strict=True)), (x,)).squeeze(1)

    jac = torch.autograd.functional.jacobian(outputs, params)
    j = torch.cat([block.reshape(x.shape[0], -1) for block in jac], dim=1)   # (n, p)
    return torch.linalg.eigvalsh(j @ j.T)[-1].item()


def train(out_dir, *, record: bool = True) -> list[float]:
    """Record the run into out_dir/catapult; return the per-step losses."""
    with deterministic(SEED):
        x, y = rank2(N, MODEL["d"], seed=1)
        model = two_layer(**MODEL)
        eta0 = N / ntk_lambda_max(model, x)
        opt = torch.optim.SGD(model.parameters(), lr=0.5 * eta0)
        rec = None
        task = {"mechanism": "catapult", "true_agop": "x1x2", "lr_raised_at_step": SWITCH,
                "eta_crit_rule": "n / lambda_max(K) for mean MSE", "lr_multiple_of_eta_crit": MULT}
        if record:
            rec = recorder(model, opt, fresh_dir(out_dir, NAME),
                           factory="forensics.zoo.models:two_layer", kwargs=MODEL, loss="mse",
                           task=task, seed=SEED, ring_size=8, tail=8)
        losses = []
        for step in range(STEPS):
            if step == SWITCH:
                lam = ntk_lambda_max(model, x)
                opt.param_groups[0]["lr"] = MULT * N / lam
            losses.append(mse_step(model, opt, rec, x, y))
        if rec is not None:
            rec.close()
    return losses
