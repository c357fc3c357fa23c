"""Adam preconditioner and update against a real torch.optim.Adam / AdamW step."""

import math

import pytest
import torch

from forensics.math.preconditioner import (
    PreconditionedOperator, adam_limit, adam_preconditioner, adam_update, grad_ratio,
    ratio_summary, stability_limits,
)


def _run_optimizer(opt_cls, steps, **kw):
    """Train a tiny linear model a few steps; return the pre-step snapshot of the last step."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(7, 3))
    opt = opt_cls([w], **kw)
    x = torch.randn(16, 3)
    snap = None
    for _ in range(steps):
        opt.zero_grad()
        (x @ w.T).pow(2).mean().backward()
        st = opt.state.get(w, {})
        snap = dict(param=w.detach().clone(), grad=w.grad.clone(),
                    exp_avg=st.get("exp_avg", torch.zeros_like(w)).clone(),
                    exp_avg_sq=st.get("exp_avg_sq", torch.zeros_like(w)).clone(),
                    step=int(st["step"]) if "step" in st else 0)
        opt.step()
    st = opt.state[w]
    return snap, w.detach().clone(), st["exp_avg"].clone(), st["exp_avg_sq"].clone()


@pytest.mark.parametrize("opt_cls,decoupled", [(torch.optim.Adam, False), (torch.optim.AdamW, True)])
@pytest.mark.parametrize("steps", [1, 5])
def test_adam_update_matches_torch(opt_cls, decoupled, steps):
    kw = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    snap, new_w, m, v = _run_optimizer(opt_cls, steps, **kw)
    out = adam_update(snap["param"], snap["grad"], snap["exp_avg"], snap["exp_avg_sq"],
                      step=snap["step"], lr=kw["lr"], betas=kw["betas"], eps=kw["eps"],
                      weight_decay=kw["weight_decay"], decoupled_weight_decay=decoupled)
    assert out.step == steps
    assert torch.allclose(out.param, new_w, atol=1e-7, rtol=1e-6)
    assert torch.allclose(out.update, new_w - snap["param"], atol=1e-7, rtol=1e-5)
    assert torch.allclose(out.exp_avg, m, atol=1e-8)
    assert torch.allclose(out.exp_avg_sq, v, atol=1e-9)


def test_preconditioner_is_what_adam_divides_by():
    kw = dict(lr=0.05, betas=(0.9, 0.999), eps=1e-8)
    snap, new_w, m, _ = _run_optimizer(torch.optim.Adam, 4, **kw)
    t = snap["step"] + 1
    p = adam_preconditioner(snap["grad"], snap["exp_avg_sq"], step=snap["step"],
                            betas=kw["betas"], eps=kw["eps"], include_beta1=True)
    # Cohen 2022: θ_t = θ_{t−1} − η P⁻¹ m_t with P including (1 − β1^t)
    assert torch.allclose(snap["param"] - kw["lr"] * m / p, new_w, atol=1e-7)
    p_no = adam_preconditioner(snap["grad"], snap["exp_avg_sq"], step=snap["step"],
                               betas=kw["betas"], eps=kw["eps"])
    assert torch.allclose(p, p_no * (1 - 0.9 ** t))
    p_prev = adam_preconditioner(snap["grad"], snap["exp_avg_sq"], step=snap["step"],
                                 betas=kw["betas"], eps=kw["eps"], moment="v_prev")
    v_hat_prev = snap["exp_avg_sq"] / (1 - 0.999 ** snap["step"])
    assert torch.allclose(p_prev, v_hat_prev.sqrt() + 1e-8)
    with pytest.raises(ValueError):
        adam_preconditioner(snap["grad"], snap["exp_avg_sq"], step=0, betas=(0.9, 0.9), eps=1e-8,
                            moment="v")


def test_grad_ratio_and_summary():
    g = torch.tensor([1.0, 0.1, 0.0, 2.0])
    v = torch.tensor([1.0, 1.0, 1.0, 0.0]) * (1 - 0.99 ** 3)
    rho = grad_ratio(g, v, step=3, beta2=0.99)
    assert torch.allclose(rho[:3], torch.tensor([1.0, 0.01, 0.0]))
    assert math.isnan(float(rho[3]))
    s = ratio_summary(rho)
    assert s["nan_count"] == 1 and s["share_below_0.1"] == pytest.approx(2 / 3)
    assert torch.isnan(grad_ratio(g, v, step=0, beta2=0.99)).all()


def test_preconditioned_operator_and_limits():
    H = torch.diag(torch.tensor([4.0, 1.0]))

    class Op:
        dim, dtype, device, num_matvecs = 2, torch.float32, torch.device("cpu"), 0

        def matvec(self, v):
            return H @ v

    op = PreconditionedOperator(Op(), torch.tensor([2.0, 0.5]))
    assert torch.allclose(op.matvec(torch.tensor([1.0, 1.0])), torch.tensor([2.0, 2.0]))
    assert op.num_matvecs == 1
    lim = stability_limits(0.1, beta1=0.9, momentum=0.9)
    assert lim["gd"] == pytest.approx(20) and lim["heavy_ball"] == pytest.approx(38)
    assert lim["adam"] == pytest.approx(380) and adam_limit(1.0, 0.9) == pytest.approx(38)
    with pytest.raises(ValueError):
        PreconditionedOperator(Op(), torch.tensor([0.0, 1.0]))
