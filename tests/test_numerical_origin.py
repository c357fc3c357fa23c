"""`numerical` names the first tensor that went non-finite and whether the loss was still
finite then: planted in recorded runs (an inf gradient under a finite loss; a NaN input)."""

import pytest
import torch

from forensics import Recorder, analyze


def _run(root, *, nan_input_at=None, inf_grad_at=None, steps=220):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 1, generator=g)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rec = Recorder(net, opt, root, loss="mse")
    for step in range(steps):
        x = torch.randn(16, 6, generator=g)
        y = torch.tanh(x @ w)
        if step == nan_input_at:
            x[3, 2] = float("nan")
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        if step == inf_grad_at:  # an overflow in the backward pass only
            net[2].weight.grad[0, 5] = float("inf")
        rec.observe(loss, {"x": x, "y": y})
        opt.step()
    rec.close()
    return net


@pytest.mark.parametrize("kind", ["inf_grad", "nan_input"])
def test_the_first_nonfinite_tensor_is_named(tmp_path, kind):
    at = 150
    net = _run(tmp_path / kind, **{f"{kind}_at": at})
    result = analyze(tmp_path / kind, model=net, mechanisms=["numerical"], write=False)
    spike = next(s for s in result.spikes if s.verdict == "numerical")
    f = next(x for x in spike.findings if x.rule == "numerical")
    assert f.evidence["first_tensor_step"] == at, f.message
    if kind == "inf_grad":
        assert f.evidence["first_tensors"][0] == "grad:2.weight"
        assert f.evidence["loss_finite_at_first"] == 1.0
        assert "the gradient of 2.weight" in f.message and "the loss was still finite" in f.message
    else:
        assert f.evidence["first_tensors"][0] == "batch:x"
        assert f.evidence["loss_finite_at_first"] == 0.0
        assert "the batch input 'x'" in f.message and "already non-finite" in f.message
