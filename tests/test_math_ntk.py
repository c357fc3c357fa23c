"""NTK: dense vs matrix-free vs structured vs an explicit Jacobian; η_crit on a linear model."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from forensics.math.flat import FlatSpec
from forensics.math.lanczos import lanczos
from forensics.math.ntk import NTKOperator, empirical_ntk, eta_crit, loss_split, ntk_dense
from forensics.math.ntk_structured import linear_layers, ntk_structured


def _mlp(c=1, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 10), nn.ReLU(inplace=True), nn.Linear(10, 8), nn.Tanh(),
                          nn.Linear(8, c)).double()
    x = torch.randn(12, 4, dtype=torch.float64)
    return model, x, {k: v.detach() for k, v in model.named_parameters()}


def _explicit_jacobian(model, params, x):
    spec = FlatSpec.from_params(params)
    flat = spec.flatten(params)
    return torch.autograd.functional.jacobian(
        lambda th: functional_call(model, spec.unflatten(th), (x,)).reshape(-1), flat)


def _f(model):
    return lambda p, xx: functional_call(model, p, (xx,))


@pytest.mark.parametrize("c", [1, 3])
def test_ntk_methods_agree_with_explicit_jacobian(c):
    model, x, params = _mlp(c)
    J = _explicit_jacobian(model, params, x)
    K_ref = J @ J.T
    K_dense = ntk_dense(_f(model), params, x)
    assert torch.allclose(ntk_dense(_f(model), params, x, per_sample=False), K_ref, atol=1e-10)
    K_struct = ntk_structured(model, x, params)
    assert torch.allclose(K_dense, K_ref, atol=1e-10)
    assert torch.allclose(K_struct, K_ref, atol=1e-10)
    op = NTKOperator(_f(model), params, x)
    u = torch.randn(op.dim, dtype=torch.float64)
    assert torch.allclose(op.matvec(u), K_ref @ u, atol=1e-10)
    res = lanczos(op, k=3, tol=1e-8, max_iter=op.dim)
    ref = torch.linalg.eigvalsh(K_ref).flip(0)[:3]
    assert torch.allclose(res.eigenvalues, ref, rtol=1e-6)
    if c > 1:
        Jr = J.reshape(x.shape[0], c, -1)
        K_tr = torch.einsum("iap,jap->ij", Jr, Jr)
        assert torch.allclose(ntk_dense(_f(model), params, x, output_mode="trace"), K_tr)
        assert torch.allclose(ntk_dense(_f(model), params, x, output_mode="trace", per_sample=False),
                              K_tr)
        assert torch.allclose(ntk_structured(model, x, params, output_mode="trace"), K_tr)


def test_structured_subset_of_params_and_fallback():
    model, x, params = _mlp()
    sub = {k: v for k, v in params.items() if k.startswith("2.")}
    J = torch.autograd.functional.jacobian(
        lambda w, b: functional_call(model, {**params, "2.weight": w, "2.bias": b}, (x,)).reshape(-1),
        (sub["2.weight"], sub["2.bias"]))
    Jf = torch.cat([j.reshape(x.shape[0], -1) for j in J], dim=1)
    assert torch.allclose(ntk_structured(model, x, sub), Jf @ Jf.T, atol=1e-10)
    conv = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(8, 1)).double()
    assert linear_layers(conv) is None
    xc = torch.randn(6, 1, 6, dtype=torch.float64)
    res = empirical_ntk(conv, dict(conv.named_parameters()), xc, k=2)
    assert res.method == "dense"
    with pytest.raises(ValueError):
        ntk_structured(conv, xc)


def test_dispatcher_methods_and_subsample():
    model, x, params = _mlp()
    a = empirical_ntk(model, params, x, k=3)
    assert a.method == "structured" and a.n == 12 and a.indices is None
    b = empirical_ntk(model, params, x, k=3, method="matrix_free", tol=1e-8, max_iter=12)
    c = empirical_ntk(_f(model), params, x, k=3)
    assert c.method == "dense"
    assert torch.allclose(a.eigenvalues, b.eigenvalues, rtol=1e-6)
    assert torch.allclose(a.eigenvalues, c.eigenvalues, rtol=1e-9)
    s = empirical_ntk(model, params, x, k=2, max_samples=5)
    assert s.n == 5 and s.n_total == 12 and s.indices.numel() == 5 and s.kernel.shape == (5, 5)


def test_linear_model_ntk_is_gram_matrix():
    torch.manual_seed(1)
    X = torch.randn(20, 6, dtype=torch.float64)
    w = {"w": torch.randn(6, dtype=torch.float64)}
    f = lambda p, xx: xx @ p["w"]  # noqa: E731
    assert torch.allclose(ntk_dense(f, w, X), X @ X.T, atol=1e-12)
    lin = nn.Linear(6, 1, bias=False).double()
    assert torch.allclose(ntk_structured(lin, X), X @ X.T, atol=1e-12)


@pytest.mark.parametrize("loss_scale", ["half_mean", "mean"])
def test_eta_crit_separates_convergence_from_divergence(loss_scale):
    torch.manual_seed(2)
    n = 30
    X = torch.randn(n, 5, dtype=torch.float64)
    y = torch.randn(n, dtype=torch.float64)
    lam = float(torch.linalg.eigvalsh(X @ X.T)[-1])
    eta = eta_crit(lam, n, loss_scale)

    def train(lr, steps=400):
        w = torch.zeros(5, dtype=torch.float64, requires_grad=True)
        losses = []
        for _ in range(steps):
            r = X @ w - y
            loss = (r @ r) / (2 * n) if loss_scale == "half_mean" else (r @ r) / n
            (g,) = torch.autograd.grad(loss, w)
            with torch.no_grad():
                w -= lr * g
            losses.append(float(loss))
        return losses

    below, above = train(0.95 * eta), train(1.05 * eta)
    assert below[-1] < below[0]
    assert above[-1] > 1e3 * above[0]


def test_loss_split():
    U = torch.eye(4, dtype=torch.float64)[:, :2]
    r = torch.tensor([3.0, 0.0, 4.0, 0.0], dtype=torch.float64)
    s = loss_split(U, r)
    assert s["PL_s"] == pytest.approx(9 / 4) and s["PL_s_perp"] == pytest.approx(16 / 4)
    assert s["total"] == pytest.approx(25 / 4)
    assert eta_crit(2.0, 10, "half_mean") == pytest.approx(10.0)
    assert eta_crit(2.0, 10, "mean") == pytest.approx(5.0)


def test_output_residual_and_structured_fallback():
    from forensics.math.ntk import output_residual

    F = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randn(6, 3, dtype=torch.float64)
    r = output_residual(lambda o: ((o - y) ** 2).sum() / (2 * 6), F)
    assert torch.allclose(r, (F - y).reshape(-1))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    r_ce = output_residual(lambda o: torch.nn.functional.cross_entropy(o, labels), F)
    ref = torch.softmax(F, 1) - torch.nn.functional.one_hot(labels, 3)
    assert torch.allclose(r_ce, ref.reshape(-1))

    class Twice(nn.Module):  # all Linear, but one layer called twice: structured must refuse
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 1)

        def forward(self, x):
            return self.b(torch.tanh(self.a(torch.tanh(self.a(x)))))

    m = Twice().double()
    x = torch.randn(8, 3, dtype=torch.float64)
    p = {k: v.detach() for k, v in m.named_parameters()}
    res = empirical_ntk(m, p, x, k=2)
    assert res.method == "dense"
    J = _explicit_jacobian(m, p, x)
    assert torch.allclose(res.kernel, J @ J.T, atol=1e-10)
