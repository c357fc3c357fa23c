"""Controlled training runs with known spikes (and controls with none) for the detection bench and
tests: each yields, per step, the batch, and the harness computes the full training loss as truth.

Kinds:
    catapult   full-batch GD on a 2-layer NTK-parameterised tanh net, lr = r * eta_crit at init,
               eta_crit = 2 / lambda_max(J^T J / n) for the loss (1/2n)||F - y||^2 (Lewkowycz et al.
               2020, arXiv 2003.02218): r in (1, 2) catapults from step 0, r < 1 is a control.
    adam       full-batch Adam driven to a tiny loss (v-hat shrinks), whose updates then blow up: spikes
               with ringing (the beta2 lag; Cohen et al. 2022, arXiv 2207.14484).
    sgd        small-batch SGD on f*(x) = x1 x2 (Zhu et al. 2023, "Catapults in SGD", arXiv
               2306.04815): batch b in {n, 50, 10, 5}; spikes of the full loss become more frequent
               as b shrinks; the full loss (all n samples) is the truth.
    noisy      the same task with a small lr: the minibatch loss swings by an order of magnitude,
               the full loss falls smoothly (a control).
    heavy      Adam on a regression with Student-t (df 2.5, scale 0.1) label noise, batches of 32:
               healthy batch losses up to 10-25x the median (a control).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


class NTKNet(nn.Module):
    """f(x) = v . tanh(W x / sqrt(d)) / sqrt(m), W and v standard normal (NTK parameterisation)."""

    def __init__(self, d: int, m: int):
        super().__init__()
        self.W = nn.Parameter(torch.randn(m, d))
        self.v = nn.Parameter(torch.randn(1, m))
        self.d, self.m = d, m

    def forward(self, x):
        return torch.tanh(x @ self.W.T / self.d ** 0.5) @ self.v.T / self.m ** 0.5


def half_mse(out, y):
    """(1/2n) ||out - y||^2."""
    return 0.5 * F.mse_loss(out, y)


@dataclass
class Case:
    """One controlled run: model, optimizer factory, the full data, the batches per step."""

    name: str
    kind: str
    model: nn.Module
    make_opt: object
    X: torch.Tensor
    Y: torch.Tensor
    batches: list = field(default_factory=list)  # (x, y) per step
    loss_fn: object = half_mse
    loss_name: str = "detection_cases:half_mse"
    control: bool = False
    note: str = ""


def eta_crit(model: nn.Module, X: torch.Tensor) -> float:
    """2 / lambda_max(J^T J / n) of the model at X (the GD stability limit of (1/2n)||F - y||^2)."""
    params = [p for p in model.parameters()]
    rows = []
    for i in range(X.shape[0]):
        g = torch.autograd.grad(model(X[i:i + 1]).sum(), params)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    J = torch.stack(rows).double()
    K = J @ J.T / X.shape[0]
    return 2.0 / float(torch.linalg.eigvalsh(K)[-1])


def catapult(ratio: float, steps: int = 60, seed: int = 0, n: int = 32, d: int = 5, m: int = 2048) -> Case:
    """Full-batch GD at lr = ratio * eta_crit(init); a catapult when 1 < ratio < 2."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    Y = torch.sin(X[:, :1] * 2)
    torch.manual_seed(seed)
    model = NTKNet(d, m)
    lr = ratio * eta_crit(model, X)
    return Case(f"catapult r={ratio:g}", "catapult", model, lambda p: torch.optim.SGD(p, lr=lr), X, Y,
                [(X, Y)] * steps, control=ratio < 1, note=f"lr {lr:.3g} = {ratio:g} eta_crit")


def product_task(n: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    return X, X[:, :1] * X[:, 1:2]


def sgd(batch: int, steps: int = 1500, seed: int = 0, n: int = 2000, d: int = 10, m: int = 256,
        ratio: float = 0.9, control: bool = False) -> Case:
    """Minibatch SGD on f*(x) = x1 x2 at lr = ratio * eta_crit(init) (of the full batch)."""
    X, Y = product_task(n, d, seed)
    torch.manual_seed(seed)
    model = NTKNet(d, m)
    lr = ratio * eta_crit(model, X[:500])
    g = torch.Generator().manual_seed(seed + 1)
    batches = []
    while len(batches) < steps:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch + 1, batch):
            batches.append((X[perm[i:i + batch]], Y[perm[i:i + batch]]))
    name = f"noisy SGD b={batch} (control)" if control else f"SGD b={batch}"
    return Case(name, "noisy" if control else "sgd", model, lambda p: torch.optim.SGD(p, lr=lr), X, Y,
                batches[:steps], control=control, note=f"lr {lr:.3g} = {ratio:g} eta_crit")


def adam(steps: int = 1500, seed: int = 0, n: int = 64, d: int = 4, lr: float = 3e-3) -> Case:
    """Full-batch Adam (beta2 0.999) on a smooth regression, long enough to reach a tiny loss."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    Y = torch.sin(X @ torch.randn(d, 1, generator=g))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    return Case(f"Adam lr={lr:g}", "adam", model, lambda p: torch.optim.Adam(p, lr=lr), X, Y, [(X, Y)] * steps,
                note="full batch, beta2 0.999")


def heavy(steps: int = 800, seed: int = 0, n: int = 4096, d: int = 8, batch: int = 32) -> Case:
    """Adam on a linear-ish regression with Student-t label noise: heavy-tailed healthy batch losses."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    torch.manual_seed(seed)
    noise = torch.distributions.StudentT(2.5).sample((n, 1)) * 0.1
    Y = X @ torch.randn(d, 1, generator=g) * 0.3 + noise
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 1))
    batches = []
    while len(batches) < steps:
        perm = torch.randperm(n, generator=g)
        batches += [(X[perm[i:i + batch]], Y[perm[i:i + batch]]) for i in range(0, n - batch + 1, batch)]
    return Case("heavy-tailed batches (control)", "heavy", model, lambda p: torch.optim.Adam(p, lr=3e-3), X, Y,
                batches[:steps], control=True, note="Student-t(2.5) label noise, batch 32")
