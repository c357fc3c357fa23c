"""Top-k eigenpairs of a symmetric matrix-free operator: Lanczos, and power iteration for reference.

``lanczos`` runs the Lanczos three-term recurrence with full reorthogonalisation by classical
Gram-Schmidt and a *conditional* second pass ("twice is enough": Daniel, Gragg, Kaufman &
Stewart 1976; Parlett 1998, §6.9): after the three-term step, one classical Gram-Schmidt pass
against q_0..q_j removes what rounding left along the basis; a second pass is made only when
that pass cancelled most of w, ‖w_after‖ < ‖w_before‖/√2 (Kahan's criterion), i.e. when
orthogonality had been lost; otherwise one pass already left w orthogonal to working
precision. It stops on the Ritz residual:
for a Ritz pair (θ_i, y_i = Q s_i) of the tridiagonal T_m, ``‖A y_i − θ_i y_i‖ = |β_m s_{m,i}|``
(Paige 1971). We stop when ``|β_m s_{m,i}| ≤ tol·|θ_i|`` for all k wanted (largest algebraic)
eigenvalues. Then each θ_i is within ``tol·|θ_i|`` of *some* eigenvalue of A (Weyl/Kahan bound),
and within ``(tol·θ_i)²/gap_i`` when the gap to the rest of the spectrum is not tiny. With
clustered eigenvalues the quadratic bound degrades to the linear one, tol·θ — still a stated
bound, which power iteration cannot give.

``power_iteration`` is the PyHessian rule (Yao et al. 2020, "PyHessian"): v ← Hv/‖Hv‖, stop when
the Rayleigh quotient changes by less than ``tol`` relatively. With λ2/λ1 ≈ 0.96–0.99 this
stops 1–5% low; it is here for comparison and benchmarks. Both return the number of matvecs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["EigResult", "lanczos", "power_iteration"]


@dataclass
class EigResult:
    """Eigenpairs found by an iterative method.

    eigenvalues: (k,) float64, descending. eigenvectors: (dim, k), unit columns, operator dtype.
    residuals: (k,) ‖A y_i − θ_i y_i‖. converged: every wanted pair met the stopping rule.
    reorth_passes: Gram-Schmidt passes made over the basis (one or two per iteration).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    num_matvecs: int
    num_iterations: int
    converged: bool
    residuals: Tensor
    method: str
    tol: float
    reorth_passes: int = 0


def _resolve(op, dim, dtype, device) -> tuple[Callable[[Tensor], Tensor], int, torch.dtype, torch.device]:
    matvec = op.matvec if hasattr(op, "matvec") else op
    dim = dim if dim is not None else getattr(op, "dim", None)
    if dim is None:
        raise ValueError("pass dim= when the operator has no .dim")
    dtype = dtype or getattr(op, "dtype", torch.float32)
    device = torch.device(device or getattr(op, "device", "cpu"))
    return matvec, int(dim), dtype, device


REORTH_KAPPA = 2 ** -0.5  # Kahan's "twice is enough" threshold (Parlett 1998, §6.9)


def _orthogonalise(w: Tensor, Q: Tensor) -> tuple[Tensor, int]:
    """w minus its components along the (orthonormal) rows of Q, by classical Gram-Schmidt; a
    second pass only when the first left less than 1/√2 of ‖w‖. -> (w, passes made)."""
    before = float(w.norm())
    w = w - Q.T @ (Q @ w)
    if float(w.norm()) >= REORTH_KAPPA * before:
        return w, 1
    return w - Q.T @ (Q @ w), 2


def _start_vector(dim: int, seed: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    gen = torch.Generator().manual_seed(seed)  # CPU generator: same start on every device
    v = torch.randn(dim, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return v / v.norm()


def lanczos(op, k: int = 1, *, tol: float = 1e-4, max_iter: int = 80, seed: int = 0,
            dim: int | None = None, dtype: torch.dtype | None = None,
            device: torch.device | str | None = None) -> EigResult:
    """Top-k (largest algebraic) eigenpairs of a symmetric operator by Lanczos.

    Args:
        op: an object with ``.matvec(v)`` (and ``.dim``, ``.dtype``, ``.device``), or a callable
            ``v -> A v`` together with ``dim=``.
        k: number of eigenpairs wanted.
        tol: stop when ``|β_m s_{m,i}| ≤ tol·|θ_i|`` for the k largest Ritz values (see module).
        max_iter: at most this many matvecs (Krylov dimension); memory grows to ``iterations·dim``.
        seed: seed of the Gaussian start vector (deterministic across devices).

    Returns:
        :class:`EigResult`; ``num_matvecs`` is the number of operator products used.
    """
    matvec, n, dtype, device = _resolve(op, dim, dtype, device)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    m_max = min(max(max_iter, k), n)
    # Lanczos basis, one row per vector; grown by doubling so memory follows the iterations used
    Q = torch.zeros(min(m_max, max(2 * k, 16)) + 1, n, dtype=dtype, device=device)
    Q[0] = _start_vector(n, seed, dtype, device)
    alphas: list[float] = []
    betas: list[float] = []
    converged = False
    theta = S = None
    beta = 0.0
    m = reorth = 0
    for j in range(m_max):
        # 1. w = A q_j − α_j q_j − β_{j−1} q_{j−1}
        w = matvec(Q[j]).to(dtype)
        alpha = float(torch.dot(Q[j], w))
        w = w - alpha * Q[j]
        if j > 0:
            w = w - betas[-1] * Q[j - 1]
        # 2. full reorthogonalisation against q_0..q_j (a second pass when the first cancelled)
        w, passes = _orthogonalise(w, Q[: j + 1])
        reorth += passes
        beta = float(w.norm())
        alphas.append(alpha)
        m = j + 1
        # 3. Ritz values of T_m and residuals |β_m s_{m,i}|
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(betas, dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(T)
        theta, S = evals.flip(0), evecs.flip(1)  # descending
        breakdown = beta <= 100 * torch.finfo(dtype).eps * max(float(theta.abs().max()), 1e-30)
        if m >= k:
            res = (beta * S[-1, :k]).abs()
            if breakdown or m == n or bool((res <= tol * theta[:k].abs()).all()):
                converged = True
                break
        if j + 1 < m_max:
            if j + 1 >= Q.shape[0]:
                grow = min(Q.shape[0], m_max + 1 - Q.shape[0])
                Q = torch.cat([Q, Q.new_zeros(grow, n)])
            if breakdown:  # invariant subspace before k pairs: restart orthogonally, β = 0
                beta = 0.0
                w, passes = _orthogonalise(_start_vector(n, seed + m, dtype, device), Q[:m])
                reorth += passes
                betas.append(0.0)
                Q[j + 1] = w / w.norm()
            else:
                betas.append(beta)
                Q[j + 1] = w / beta
    assert theta is not None and S is not None
    residuals = (beta * S[-1, :k]).abs()
    vecs = Q[:m].T @ S[:, :k].to(device=device, dtype=dtype)
    vecs = vecs / vecs.norm(dim=0, keepdim=True)
    return EigResult(eigenvalues=theta[:k].clone(), eigenvectors=vecs, num_matvecs=m,
                     num_iterations=m, converged=converged, residuals=residuals,
                     method="lanczos", tol=tol, reorth_passes=reorth)


def power_iteration(op, k: int = 1, *, tol: float = 1e-3, max_iter: int = 100, seed: int = 0,
                    dim: int | None = None, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> EigResult:
    """Top-k eigenpairs by power iteration with deflation and PyHessian's stopping rule.

    For each pair: v ← A v/‖A v‖ (v kept orthogonal to pairs already found), θ = vᵀAv; stop
    when ``|θ − θ_prev| / (|θ_prev| + 1e-6) < tol`` (Yao et al. 2020). Converges to the largest
    *magnitude* eigenvalue, at a rate (λ2/λ1)^iter — slow and early-stopping when clustered.
    ``num_matvecs`` counts all products over the k pairs; ``converged`` is False if any pair hit
    ``max_iter`` without meeting the rule.
    """
    matvec, n, dtype, device = _resolve(op, dim, dtype, device)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    found: list[Tensor] = []
    values: list[float] = []
    residuals: list[float] = []
    num_matvecs = 0
    all_converged = True
    for i in range(k):
        v = _start_vector(n, seed + i, dtype, device)
        theta_prev: float | None = None
        ok = False
        hv = theta = None
        for it in range(max_iter):
            for u in found:
                v = v - torch.dot(u, v) * u
            v = v / v.norm()
            hv = matvec(v).to(dtype)
            num_matvecs += 1
            for u in found:
                hv = hv - torch.dot(u, hv) * u
            theta = float(torch.dot(v, hv))
            if theta_prev is not None and abs(theta - theta_prev) / (abs(theta_prev) + 1e-6) < tol:
                ok = True
                break
            theta_prev = theta
            if it < max_iter - 1:
                v = hv / hv.norm()
        assert hv is not None and theta is not None
        residuals.append(float((hv - theta * v).norm()))
        found.append(v)
        values.append(theta)
        all_converged &= ok
    order = sorted(range(k), key=lambda i: -values[i])
    return EigResult(
        eigenvalues=torch.tensor([values[i] for i in order], dtype=torch.float64),
        eigenvectors=torch.stack([found[i] for i in order], dim=1),
        num_matvecs=num_matvecs, num_iterations=num_matvecs, converged=all_converged,
        residuals=torch.tensor([residuals[i] for i in order], dtype=torch.float64),
        method="power", tol=tol)
