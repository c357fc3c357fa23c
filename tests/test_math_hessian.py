"""Oracle tests for HVPs and Lanczos: the dense autograd Hessian of tiny models is the reference."""

import pytest
import torch
from torch.func import functional_call

from forensics.math.flat import FlatSpec, flatten, unflatten
from forensics.math.hvp import HVPOperator, dense_hessian
from forensics.math.lanczos import lanczos, power_iteration
from forensics.math.preconditioner import PreconditionedOperator


def _tiny_problem(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 12),
                                torch.nn.Tanh(), torch.nn.Linear(12, 1)).to(dtype)
    x = torch.randn(40, 5, dtype=dtype)
    y = torch.sin(x.sum(1, keepdim=True))
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p):  # hand-written MSE: F.mse_loss fails under jvp(grad(...)) in torch 2.13
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()

    return loss, params


def test_flat_roundtrip():
    params = {"a": torch.randn(2, 3), "b": torch.randn(4)}
    spec = FlatSpec.from_params(params)
    flat = flatten(params)
    assert spec.dim == 10 and flat.shape == (10,)
    back = unflatten(flat, params)
    assert all(torch.equal(back[n], params[n]) for n in params)
    with pytest.raises(ValueError):
        spec.unflatten(torch.zeros(9))


def test_hvp_quadratic_known_hessian():
    A = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    params = {"x": torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64),
              "s": torch.tensor(2.0, dtype=torch.float64)}

    def loss(p):  # 1/2 xᵀAx − bᵀx + s³ ⇒ H = blockdiag(A, 6 s)
        return 0.5 * p["x"] @ A @ p["x"] - b @ p["x"] + p["s"] ** 3

    H = torch.zeros(4, 4, dtype=torch.float64)
    H[:3, :3] = A
    H[3, 3] = 12.0
    for method in ("double_backward", "func"):
        op = HVPOperator(loss, params, method=method)
        assert torch.allclose(op.to_dense(), H)
        assert op.num_matvecs == 4
        assert torch.allclose(op.grad, torch.cat([A @ params["x"] - b, torch.tensor([12.0])]).double())


@pytest.mark.parametrize("method", ["double_backward", "func"])
def test_hvp_matches_dense_hessian(method):
    loss, params = _tiny_problem()
    H = dense_hessian(loss, params)
    op = HVPOperator(loss, params, method=method)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(op.matvec(v), H @ v, rtol=1e-9, atol=1e-10)
    assert op.dim == H.shape[0] and op.num_matvecs == 1


def test_hvp_unused_and_linear_params():
    params = {"w": torch.tensor([1.0, 2.0]), "c": torch.tensor([0.5]), "unused": torch.zeros(3)}
    op = HVPOperator(lambda p: (p["w"] ** 2).sum() + 3 * p["c"].sum(), params)
    assert torch.allclose(op.to_dense(), torch.diag(torch.tensor([2.0, 2, 0, 0, 0, 0])))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lanczos_matches_dense_top_k(dtype):
    loss, params = _tiny_problem(dtype=dtype)
    H = dense_hessian(loss, params).double()
    evals, evecs = torch.linalg.eigh(H)
    top = evals.flip(0)[:3]
    vecs = evecs.flip(1)[:, :3]
    op = HVPOperator(loss, params)
    res = lanczos(op, k=3, tol=1e-6 if dtype == torch.float64 else 1e-5, max_iter=200)
    assert res.converged and res.num_matvecs == op.num_matvecs
    assert torch.allclose(res.eigenvalues, top, rtol=1e-4)
    cos = (res.eigenvectors.double().T @ vecs).diagonal().abs()
    assert (cos > 1 - 1e-3).all(), cos
    assert (res.residuals <= res.tol * res.eigenvalues.abs() + 1e-12).all()


def test_preconditioned_lanczos_matches_dense():
    loss, params = _tiny_problem(seed=3)
    H = dense_hessian(loss, params)
    p = torch.rand(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.1
    ref = torch.linalg.eigvals(torch.diag(1 / p) @ H).real.sort(descending=True).values[:2]
    op = PreconditionedOperator(HVPOperator(loss, params), p)
    res = lanczos(op, k=2, tol=1e-7, max_iter=200)
    assert res.converged
    assert torch.allclose(res.eigenvalues, ref, rtol=1e-4)


def _clustered_operator(dim=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    lam = torch.linspace(0.0, 0.9, dim, dtype=torch.float64)
    lam[-1], lam[-2] = 1.0, 0.98  # λ2/λ1 = 0.98
    A = (Q * lam) @ Q.T
    return A, lam


def test_lanczos_converges_where_power_iteration_stops_low():
    A, lam = _clustered_operator()
    lan = lanczos(lambda v: A @ v, k=1, tol=1e-6, max_iter=200, dim=A.shape[0], dtype=torch.float64)
    assert lan.converged
    assert abs(float(lan.eigenvalues[0]) - 1.0) < 1e-6
    pw = power_iteration(lambda v: A @ v, tol=1e-3, max_iter=500, dim=A.shape[0], dtype=torch.float64)
    assert pw.converged
    assert float(pw.eigenvalues[0]) < 1.0 - 1e-3  # PyHessian's rule stops low on a cluster
    assert lan.num_matvecs < pw.num_matvecs or float(pw.eigenvalues[0]) < 0.999


def test_lanczos_deterministic_and_small_rank():
    A = torch.diag(torch.tensor([5.0, 2.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    r1 = lanczos(lambda v: A @ v, k=2, dim=6, dtype=torch.float64, seed=7)
    r2 = lanczos(lambda v: A @ v, k=2, dim=6, dtype=torch.float64, seed=7)
    assert torch.equal(r1.eigenvalues, r2.eigenvalues)
    assert torch.allclose(r1.eigenvalues, torch.tensor([5.0, 2.0], dtype=torch.float64))
    assert r1.converged and r1.num_matvecs <= 3
    pw = power_iteration(lambda v: A @ v, k=2, tol=1e-10, max_iter=200, dim=6, dtype=torch.float64)
    assert torch.allclose(pw.eigenvalues, torch.tensor([5.0, 2.0], dtype=torch.float64), rtol=1e-6)


def test_hvp_dtype_override_and_shape_check():
    params = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    op = HVPOperator(lambda p: (p["w"] ** 3).sum(), params, dtype=torch.float64)
    assert op.dtype == torch.float64
    assert torch.allclose(op.matvec(torch.ones(2, dtype=torch.float64)),
                          torch.tensor([6.0, 12.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        op.matvec(torch.ones(3))
    with pytest.raises(ValueError):
        HVPOperator(lambda p: p["w"].sum(), params, method="nope")


def test_func_hvp_reports_the_mse_loss_quirk_clearly():
    import torch.nn.functional as F

    loss, params = _tiny_problem()
    model_loss = lambda p: F.mse_loss(p["4.bias"] * torch.ones(3, dtype=torch.float64),  # noqa: E731
                                      torch.zeros(3, dtype=torch.float64)) + loss(p)
    op = HVPOperator(model_loss, params)  # double backward handles F.mse_loss
    assert torch.isfinite(op.matvec(torch.ones(op.dim, dtype=torch.float64))).all()
    op_f = HVPOperator(model_loss, params, method="func")
    try:
        op_f.matvec(torch.ones(op_f.dim, dtype=torch.float64))
    except ValueError as err:
        assert "double_backward" in str(err)


def test_lanczos_restarts_after_early_breakdown(monkeypatch):
    import forensics.math.lanczos as lz

    A = torch.diag(torch.tensor([3.0, 1.0, 2.0, 0.0], dtype=torch.float64))
    e1 = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    orig = lz._start_vector
    # the start vector is an eigenvector: an invariant subspace after one step, before k = 3
    monkeypatch.setattr(lz, "_start_vector",
                        lambda n, seed, dt, dev: e1.clone() if seed == 0 else orig(n, seed, dt, dev))
    res = lanczos(lambda v: A @ v, k=3, tol=1e-10, dim=4, dtype=torch.float64)
    assert res.converged
    assert torch.allclose(res.eigenvalues, torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
