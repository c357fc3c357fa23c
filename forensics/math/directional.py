"""Curvature and loss along chosen directions: gradient, actual update, top eigenvectors.

Gilmer et al. 2021 ("A Loss Curvature Perspective on Training Instability in Deep Learning")
track dᵀHd/‖d‖² for the gradient and the update and the cosine of the gradient with the top
Hessian eigenvectors; the β₂-lag seed (004) uses the preconditioned gradient-directional
curvature, whose crossing of 2/η marks the spike. Everything here works on flat vectors and a
matrix-free operator with ``.matvec`` (e.g. :class:`forensics.math.hvp.HVPOperator`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from forensics.math.flat import FlatSpec

__all__ = ["directional_curvature", "preconditioned_directional_curvature", "cosine",
           "cosine_with_eigenvectors", "loss_along"]


def _matvec(op) -> Callable[[Tensor], Tensor]:
    return op.matvec if hasattr(op, "matvec") else op


def directional_curvature(op, d: Tensor) -> float:
    """Rayleigh quotient dᵀHd/‖d‖² (one product). NaN for a zero direction.

    Gilmer et al. 2021: for d = −∇L, GD is locally unstable along d when η·dᵀHd/‖d‖² > 2.
    """
    nrm2 = float(torch.dot(d, d))
    if nrm2 == 0.0:
        return float("nan")
    return float(torch.dot(d, _matvec(op)(d))) / nrm2


def preconditioned_directional_curvature(op, grad: Tensor, p_diag: Tensor) -> dict[str, float]:
    """Gradient-directional curvature of the preconditioned step, in two forms (two products).

    - ``"seed"``: gᵀP⁻¹Hg/‖g‖², the seed's Ĥ = P⁻¹H wording (004), not a Rayleigh quotient of a
      symmetric matrix, so it can exceed λ_max(P⁻¹H).
    - ``"symmetric"``: uᵀ(P^{-1/2}HP^{-1/2})u/‖u‖² with u = P^{-1/2}g, i.e. dᵀHd / dᵀPd for the
      step direction d = P⁻¹g; bounded by λ_max(P⁻¹H), so comparable to the same 2/η limit.
    """
    mv = _matvec(op)
    p = p_diag.to(device=grad.device, dtype=grad.dtype)
    g2 = float(torch.dot(grad, grad))
    if g2 == 0.0:
        return {"seed": float("nan"), "symmetric": float("nan")}
    seed = float(torch.dot(grad / p, mv(grad))) / g2
    d = grad / p
    sym = float(torch.dot(d, mv(d))) / float(torch.dot(d, p * d))
    return {"seed": seed, "symmetric": sym}


def cosine(a: Tensor, b: Tensor) -> float:
    """⟨a, b⟩/(‖a‖‖b‖); NaN if either is zero."""
    den = float(a.norm()) * float(b.norm())
    return float(torch.dot(a, b)) / den if den > 0 else float("nan")


def cosine_with_eigenvectors(d: Tensor, eigenvectors: Tensor) -> Tensor:
    """|cos| between ``d`` (dim,) and each column of ``eigenvectors`` (dim, k) -> (k,).

    Absolute value: eigenvectors have no sign. The squared values sum to ≤ 1 for orthonormal
    columns (the share of ‖d‖² in their span).
    """
    v = eigenvectors.to(dtype=d.dtype, device=d.device)
    dn = d.norm()
    if float(dn) == 0.0:
        return torch.full((v.shape[1],), float("nan"), dtype=d.dtype, device=d.device)
    return ((v.T @ d).abs() / (v.norm(dim=0) * dn)).detach()


@torch.no_grad()
def loss_along(loss_fn: Callable[[dict[str, Tensor]], Tensor], params: Mapping[str, Tensor],
               d: Tensor, alphas: Sequence[float] | Tensor, *, normalize: bool = False) -> Tensor:
    """L(θ + α d) for each α (Gilmer et al. 2021 loss-along-direction plots) -> (len(alphas),).

    ``d`` is flat in the order of ``params``; with ``normalize=True`` it is scaled to unit norm,
    so α is a distance in parameter space. α = 0 gives the loss at θ.
    """
    spec = FlatSpec.from_params(params)
    theta = spec.flatten({n: t.detach() for n, t in params.items()})
    d = d.to(device=theta.device, dtype=theta.dtype)
    if normalize:
        d = d / d.norm()
    out = [float(loss_fn(spec.unflatten(theta + float(a) * d))) for a in alphas]
    return torch.tensor(out, dtype=torch.float64)
