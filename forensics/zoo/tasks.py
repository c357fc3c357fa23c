"""Small synthetic tasks for the sample runs: each returns tensors, seeded, with no I/O."""

import math

import torch


def rank2(n: int, d: int = 100, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I_d), y = x1 * x2 (Zhu et al.): the true AGOP tends to diag(1, 1, 0, ...).

    Returns x of shape (n, d) and y of shape (n, 1).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, (x[:, 0] * x[:, 1]).unsqueeze(1)


def true_agop_rank2(d: int) -> torch.Tensor:
    """The population AGOP of x1*x2 under N(0, I): diag(1, 1, 0, ..., 0)."""
    g = torch.zeros(d, d)
    g[0, 0] = g[1, 1] = 1.0
    return g


def grid_1d(n: int = 128, *, low: tuple = ((1, 1.0),), high: tuple = ((12, 0.3),),
            phase: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniform periodic grid x_j = -1 + 2j/n on [-1, 1) and y = sum_k a_k sin(pi k x + phase).

    `low` and `high` are (k, amplitude) pairs: k is the DFT index on the grid, so the
    target's energy sits exactly in bins k (low part) and the high part's bins.
    Returns x of shape (n, 1) and y of shape (n, 1).
    """
    x = -1.0 + 2.0 * torch.arange(n, dtype=torch.float32) / n
    y = torch.zeros(n)
    for k, a in tuple(low) + tuple(high):
        y += a * torch.sin(math.pi * k * x + phase)
    return x.unsqueeze(1), y.unsqueeze(1)


def gaussian_regression(n: int, d: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I_d), y = tanh of a fixed random linear map plus a smooth quadratic term."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g) / math.sqrt(d)
    y = torch.tanh(2 * x @ w) + 0.5 * (x[:, 0] ** 2 - 1) / math.sqrt(2)
    return x, y.unsqueeze(1)
