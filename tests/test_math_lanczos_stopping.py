"""Known answers for Lanczos' conditional reorthogonalisation and its stated stopping tolerance.

Quadratics with a known Hessian: L(θ) = ½ θᵀAθ has H = A everywhere, so the eigenvalues the
HVP operator and Lanczos return can be checked against eigvalsh(A) (or a diagonal spectrum).
"""

import pytest
import torch

from forensics.math.hvp import HVPOperator
from forensics.math.lanczos import _orthogonalise, lanczos
from forensics.math.preconditioner import PreconditionedOperator


def _quadratic(eigs: torch.Tensor, seed: int = 0):
    """(loss_fn, params, A) for L = ½ θᵀAθ with A = Q diag(eigs) Qᵀ, a random orthogonal Q."""
    g = torch.Generator().manual_seed(seed)
    n = eigs.numel()
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(eigs.double()) @ Q.T
    A = (A + A.T) / 2
    params = {"w": torch.randn(n, generator=g, dtype=torch.float64)}
    return (lambda p: 0.5 * p["w"] @ (A @ p["w"])), params, A


def _orthogonality_loss(vecs: torch.Tensor) -> float:
    gram = vecs.T @ vecs
    return float((gram - torch.eye(gram.shape[0], dtype=gram.dtype)).abs().max())


def test_second_pass_is_conditional_and_the_answer_stays_exact():
    eigs = torch.linspace(0.1, 10.0, 120, dtype=torch.float64)
    loss, params, A = _quadratic(eigs)
    res = lanczos(HVPOperator(loss, params), k=3, tol=1e-10, max_iter=120)
    assert res.converged
    assert res.eigenvalues.tolist() == pytest.approx(torch.linalg.eigvalsh(A).flip(0)[:3].tolist(),
                                                     rel=1e-9)
    assert _orthogonality_loss(res.eigenvectors) < 1e-8
    # one pass per iteration at least; "always twice" would be exactly 2 per iteration
    assert res.num_iterations <= res.reorth_passes < 2 * res.num_iterations


def test_second_pass_runs_only_where_the_first_cancelled_most_of_the_vector():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(2000, 5, generator=g, dtype=torch.float64))
    Q = Q.T.float().contiguous()  # 5 orthonormal rows
    r = torch.randn(2000, generator=g)
    spread = r / r.norm()
    w, passes = _orthogonalise(spread, Q)  # a generic vector: one pass keeps > 1/√2 of it
    assert passes == 1 and float((Q @ w).abs().max()) / float(w.norm()) < 1e-6
    nearly_in = Q[0] + 1e-4 * spread  # almost in the span: one pass leaves ~ε/1e-4 along Q
    once = nearly_in - Q.T @ (Q @ nearly_in)
    w, passes = _orthogonalise(nearly_in, Q)
    assert passes == 2
    assert float((Q @ w).abs().max()) / float(w.norm()) < 1e-5 < \
        float((Q @ once).abs().max()) / float(once.norm())


def test_float32_spectrum_over_twelve_decades_stays_orthogonal():
    eigs = torch.cat([torch.tensor([1e6, 9.9e5, 9.8e5]), torch.logspace(-6, 2, 197)])
    A = torch.diag(eigs).float()
    res = lanczos(lambda v: A @ v, k=3, tol=1e-6, max_iter=150, dim=200, dtype=torch.float32)
    assert _orthogonality_loss(res.eigenvectors.double()) < 1e-4
    assert res.eigenvalues.tolist() == pytest.approx([1e6, 9.9e5, 9.8e5], rel=1e-4)


@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_stated_tolerance_bounds_the_preconditioned_eigenvalue(tol):
    """λ_max(P^{-1/2}AP^{-1/2}) of a quadratic: the Ritz value is within tol·θ of the true top
    eigenvalue (the top is separated, so the nearest eigenvalue is the top one)."""
    eigs = torch.cat([torch.tensor([40.0]), torch.linspace(0.01, 20.0, 299)])
    loss, params, A = _quadratic(eigs, seed=1)
    p = torch.rand(300, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5
    s = p.rsqrt()
    true = float(torch.linalg.eigvalsh(s[:, None] * A * s[None, :])[-1])
    res = lanczos(PreconditionedOperator(HVPOperator(loss, params), p), k=1, tol=tol, max_iter=120)
    theta = float(res.eigenvalues[0])
    assert res.converged and float(res.residuals[0]) <= tol * abs(theta)
    assert abs(theta - true) <= tol * abs(theta)


def test_looser_tolerance_takes_fewer_products():
    eigs = torch.cat([torch.tensor([40.0]), torch.linspace(0.01, 30.0, 299)])
    loss, params, _ = _quadratic(eigs, seed=3)
    loose = lanczos(HVPOperator(loss, params), k=1, tol=1e-2, max_iter=120)
    tight = lanczos(HVPOperator(loss, params), k=1, tol=1e-4, max_iter=120)
    assert loose.converged and tight.converged
    assert loose.num_matvecs < tight.num_matvecs
    assert float(loose.eigenvalues[0]) == pytest.approx(40.0, rel=1e-2)
