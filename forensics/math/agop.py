"""Average gradient outer product (AGOP) of a model w.r.t. its inputs, and alignment with a true AGOP.

G = (1/n) Σ_i J_x(x_i)ᵀ J_x(x_i), with J_x(x_i) the (c, d) Jacobian of the outputs w.r.t. the
input (Radhakrishnan et al. 2024, "Mechanism for feature learning in neural networks and
backpropagation-free machine learning models"). The catapult seed (001) reports the alignment
cos(G, G*) = ⟨G, G*⟩_F/(‖G‖_F‖G*‖_F) rising after a catapult, G* the true AGOP of the task.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["agop", "agop_alignment", "true_agop", "TRUE_AGOP_TASKS"]

TRUE_AGOP_TASKS = ("x1x2", "x1", "sin_x1")


def agop(f: Callable[[Tensor], Tensor], x: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """G = (1/n) Σ_i J_x(x_i)ᵀ J_x(x_i) for ``f: (n, d) -> (n,) or (n, c)`` -> (d, d).

    Per-sample input Jacobians by ``torch.func.vmap(torch.func.jacrev(...))``: f is called on one
    sample with a leading batch dimension of 1, so it must treat samples independently (an
    ``nn.Module`` in eval mode, or a model closed over its parameters). For the true AGOP of
    a known target, pass the target function: ``agop(lambda x: x[:, 0] * x[:, 1], x)``.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (n, d), got {tuple(x.shape)}")

    def single(xi: Tensor) -> Tensor:
        return f(xi.unsqueeze(0)).reshape(-1)  # (c,)

    jac = torch.func.vmap(torch.func.jacrev(single), chunk_size=chunk_size)(x.detach())  # (n, c, d)
    return torch.einsum("ncd,nce->de", jac, jac) / x.shape[0]


def agop_alignment(G: Tensor, G_star: Tensor) -> float:
    """cos(G, G*) = ⟨G, G*⟩_F/(‖G‖_F‖G*‖_F); 1 when G is a positive multiple of G*."""
    g, gs = G.double().reshape(-1), G_star.to(G.device).double().reshape(-1)
    den = float(g.norm() * gs.norm())
    return float(g @ gs) / den if den > 0 else float("nan")


def true_agop(task: str, d: int, *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
    """Analytic AGOP E_x[∇f*(x)∇f*(x)ᵀ] for x ~ N(0, I_d) and a named target f*.

    - ``"x1x2"``: f* = x1·x2, ∇f* = (x2, x1, 0, …) → diag(1, 1, 0, …).
    - ``"x1"``: f* = x1 → e1 e1ᵀ.
    - ``"sin_x1"``: f* = sin(x1), E[cos²(x1)] = (1 + e^{−2})/2 → that times e1 e1ᵀ.
    For other targets compute it empirically: ``agop(f_star, x)`` on many samples.
    """
    if d < 2 and task == "x1x2":
        raise ValueError("x1x2 needs d >= 2")
    diag = torch.zeros(d, dtype=torch.float64)
    if task == "x1x2":
        diag[:2] = 1.0
    elif task == "x1":
        diag[0] = 1.0
    elif task == "sin_x1":
        diag[0] = (1 + torch.exp(torch.tensor(-2.0, dtype=torch.float64))) / 2
    else:
        raise ValueError(f"unknown task {task!r}; known: {TRUE_AGOP_TASKS}")
    return torch.diag(diag).to(dtype=dtype, device=device)
