"""Adam's diagonal preconditioner, its exact update, the g²/v lag ratio and the stability limits.

Conventions (DESIGN.md §1): the snapshot of step t holds θ_{t−1}, the gradient g_t at θ_{t−1},
and the moments *before* update t: ``exp_avg`` = m_{t−1}, ``exp_avg_sq`` = v_{t−1}, and
``step`` = number of updates done so far = t−1. Update t therefore uses the bias-correction
count ``step + 1`` and the second moment v_t = β2·v_{t−1} + (1−β2)·g_t².

- ``moment="v_t"``: P_t = diag(√(v_t/(1−β2^t)) + ε), the preconditioner update t really uses.
- ``moment="v_prev"``: P from v̂_{t−1} = v_{t−1}/(1−β2^{t−1}), the lagged preconditioner of the
  β₂-lag analysis (seed 004), which does not yet know about g_t.
- ``include_beta1=True``: P times (1−β1^t), Cohen et al. 2022 ("Adaptive Gradient Methods at the
  Edge of Stability") convention, so that θ_t = θ_{t−1} − η P⁻¹ m_t.

All functions are elementwise on tensors of any shape (flatten a params dict first with
:mod:`forensics.math.flat`). ``grad`` is the gradient Adam sees: for Adam with L2 weight decay
that is g + wd·θ (:func:`effective_grad`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AdamStep", "adam_preconditioner", "adam_update", "effective_grad", "grad_ratio",
    "ratio_summary", "PreconditionedOperator", "stability_limits", "gd_limit",
    "heavy_ball_limit", "adam_limit", "second_moment_next",
]

_MOMENTS = ("v_t", "v_prev")


def effective_grad(grad: Tensor, param: Tensor, weight_decay: float = 0.0, *,
                   decoupled_weight_decay: bool = False, maximize: bool = False) -> Tensor:
    """The gradient fed into Adam's moments: −g if maximize, plus wd·θ for Adam's L2 decay.

    AdamW (decoupled) leaves the gradient alone and decays θ directly (see :func:`adam_update`).
    """
    g = -grad if maximize else grad
    if weight_decay != 0 and not decoupled_weight_decay:
        g = g + weight_decay * param
    return g


def second_moment_next(grad: Tensor, exp_avg_sq: Tensor, beta2: float) -> Tensor:
    """v_t = β2·v_{t−1} + (1−β2)·g_t² (the moment update t computes before stepping)."""
    return exp_avg_sq * beta2 + (1 - beta2) * grad * grad


def adam_preconditioner(grad: Tensor, exp_avg_sq: Tensor, *, step: int,
                        betas: tuple[float, float], eps: float, moment: str = "v_t",
                        include_beta1: bool = False) -> Tensor:
    """Diagonal of P = (1−β1^t)^[include_beta1] · (√v̂ + ε) for the update about to happen.

    ``step`` is the snapshot's optimizer step count (updates done so far, t−1). With
    ``moment="v_t"``, v̂ = v_t/(1−β2^t), t = step+1 — what update t divides by. With
    ``moment="v_prev"``, v̂ = v_{t−1}/(1−β2^{t−1}) (zero before the first update); the
    (1−β1^·) factor uses the same count. ``grad`` is unused for ``"v_prev"``.
    Formula: Kingma & Ba 2015; P convention from Cohen et al. 2022.
    """
    if moment not in _MOMENTS:
        raise ValueError(f"moment must be one of {_MOMENTS}, got {moment!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    beta1, beta2 = betas
    if moment == "v_t":
        t = step + 1
        v = second_moment_next(grad, exp_avg_sq, beta2)
    else:
        t = step
        v = exp_avg_sq
    v_hat = v / (1 - beta2 ** t) if t > 0 else torch.zeros_like(v)
    p = v_hat.sqrt() + eps
    if include_beta1 and t > 0:
        p = p * (1 - beta1 ** t)
    return p


@dataclass
class AdamStep:
    """One Adam/AdamW update reproduced from a snapshot: Δθ = θ_t − θ_{t−1} and the new moments."""

    update: Tensor
    param: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: int


def adam_update(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *, step: int,
                lr: float, betas: tuple[float, float], eps: float, weight_decay: float = 0.0,
                decoupled_weight_decay: bool = False, maximize: bool = False) -> AdamStep:
    """Reproduce ``torch.optim.Adam`` (``decoupled_weight_decay=False``) / ``AdamW`` (True) exactly.

    With t = step+1: g' = g (+ wd·θ for Adam L2); m_t = β1 m + (1−β1) g'; v_t = β2 v + (1−β2) g'²;
    θ ← θ·(1 − lr·wd) for AdamW; θ_t = θ − (lr/(1−β1^t))·m_t/(√v_t/√(1−β2^t) + ε).
    amsgrad is not supported (the snapshot does not hold max_exp_avg_sq).
    """
    beta1, beta2 = betas
    t = step + 1
    g = effective_grad(grad, param, weight_decay, decoupled_weight_decay=decoupled_weight_decay,
                       maximize=maximize)
    theta = param * (1 - lr * weight_decay) if (decoupled_weight_decay and weight_decay) else param
    m = torch.lerp(exp_avg, g, 1 - beta1)
    v = second_moment_next(g, exp_avg_sq, beta2)
    denom = v.sqrt() / math.sqrt(1 - beta2 ** t) + eps
    new = theta - (lr / (1 - beta1 ** t)) * m / denom
    return AdamStep(update=new - param, param=new, exp_avg=m, exp_avg_sq=v, step=t)


def grad_ratio(grad: Tensor, exp_avg_sq: Tensor, *, step: int, beta2: float) -> Tensor:
    """ρ_t = g_t² / v̂_{t−1} per coordinate, v̂_{t−1} = v_{t−1}/(1−β2^{t−1}) (seed 004).

    ρ ≪ 1 on many coordinates is the β₂-lag regime, where v decays like β2^k and no longer
    tracks the gradient. NaN where v̂_{t−1} = 0 (including before the first update).
    """
    if step <= 0:
        return torch.full_like(grad, float("nan"))
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    rho = grad * grad / v_hat
    return torch.where(v_hat > 0, rho, torch.full_like(rho, float("nan")))


def ratio_summary(rho: Tensor, *, thresholds: tuple[float, ...] = (0.01, 0.1, 1.0)) -> dict[str, float]:
    """Summary of a ρ vector: count, NaN count, median, mean, 10/90% quantiles, log10 mean and
    the share of (finite) coordinates below each threshold (keys ``share_below_<thr>``)."""
    r = rho.detach().reshape(-1).double()
    finite = r[torch.isfinite(r)]
    out = {"count": float(r.numel()), "nan_count": float(r.numel() - finite.numel())}
    if finite.numel() == 0:
        for key in ("median", "mean", "q10", "q90", "log10_mean"):
            out[key] = float("nan")
        for thr in thresholds:
            out[f"share_below_{thr:g}"] = float("nan")
        return out
    # exact quantiles of every coordinate by selection (numpy's partition, O(n); torch.quantile
    # sorts, and was given a 2M-coordinate subsample: ×4 slower on 10M coordinates)
    q = np.quantile(finite.cpu().numpy(), [0.1, 0.5, 0.9])
    out.update(q10=float(q[0]), median=float(q[1]), q90=float(q[2]), mean=float(finite.mean()),
               log10_mean=float(finite.clamp_min(1e-300).log10().mean()))
    for thr in thresholds:
        out[f"share_below_{thr:g}"] = int((finite < thr).sum()) / finite.numel()
    return out


class PreconditionedOperator:
    """The symmetric operator v ↦ P^{-1/2} H (P^{-1/2} v), whose spectrum is that of P⁻¹H.

    Wraps any operator with ``.matvec`` (e.g. :class:`forensics.math.hvp.HVPOperator`) and a
    flat positive diagonal ``p_diag``; run :func:`forensics.math.lanczos.lanczos` on it.
    ``num_matvecs`` counts its own products (each is one product of the inner operator).
    """

    def __init__(self, op, p_diag: Tensor) -> None:
        if p_diag.shape != (op.dim,):
            raise ValueError(f"p_diag must have shape ({op.dim},), got {tuple(p_diag.shape)}")
        if bool((p_diag <= 0).any()):
            raise ValueError("p_diag must be positive (is eps > 0?)")
        self.op = op
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device
        self.inv_sqrt = p_diag.to(device=op.device, dtype=op.dtype).rsqrt()
        self.num_matvecs = 0

    def matvec(self, v: Tensor) -> Tensor:
        """P^{-1/2} H P^{-1/2} v: one Hessian-vector product between two diagonal scalings."""
        self.num_matvecs += 1
        return self.inv_sqrt * self.op.matvec(self.inv_sqrt * v)

    __call__ = matvec


def gd_limit(lr: float) -> float:
    """GD is stable on a quadratic iff λ_max(H) < 2/η (Cohen et al. 2021)."""
    return 2.0 / lr


def heavy_ball_limit(lr: float, momentum: float) -> float:
    """Heavy-ball momentum β: λ_max(H) < (2+2β)/η (Cohen et al. 2021)."""
    return (2.0 + 2.0 * momentum) / lr


def adam_limit(lr: float, beta1: float) -> float:
    """Adam: λ_max(P⁻¹H) < (2+2β1)/((1−β1)η), 38/η at β1=0.9 (Cohen et al. 2022)."""
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


def stability_limits(lr: float, *, beta1: float = 0.0, momentum: float = 0.0) -> dict[str, float]:
    """All limits at once: ``gd`` 2/η, ``heavy_ball`` (2+2β)/η, ``adam`` (2+2β1)/((1−β1)η),
    ``adam_lag`` 2/η (the momentum-free limit of the β₂-lag seed, compared with λ_max(P⁻¹H))."""
    return {"gd": gd_limit(lr), "heavy_ball": heavy_ball_limit(lr, momentum),
            "adam": adam_limit(lr, beta1), "adam_lag": gd_limit(lr)}
