"""HVPs through torch's fused attention on CPU: HVPOperator picks the math SDPA kernel itself
(the flash CPU kernel has no double backward), so callers need no context of their own."""

import pytest
import torch
from torch.func import functional_call

from forensics.math.hvp import HVPOperator


@pytest.mark.parametrize("method", ["double_backward", "func"])
def test_hvp_through_transformer_encoder_layer_matches_finite_differences(method):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    x = torch.randn(2, 8, 16)
    params = {n: p.detach().clone() for n, p in layer.named_parameters()}

    def loss_fn(ps):
        return functional_call(layer, ps, (x,), {"is_causal": False}).pow(2).mean()

    op = HVPOperator(loss_fn, params, method=method)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1))
    hv = op.matvec(v)

    # reference: float64 double backward under an explicit math-kernel context
    from torch.nn.attention import SDPBackend, sdpa_kernel

    layer64, x64 = layer.double(), x.double()
    ps = {n: t.double().requires_grad_(True) for n, t in params.items()}
    with sdpa_kernel([SDPBackend.MATH]):
        out = functional_call(layer64, ps, (x64,), {"is_causal": False}).pow(2).mean()
        grads = torch.autograd.grad(out, list(ps.values()), create_graph=True)
        ref = torch.autograd.grad(grads, list(ps.values()), grad_outputs=list(op.spec.split(v.double())))
    ref = torch.cat([r.reshape(-1) for r in ref])
    assert float((hv.double() - ref).norm() / ref.norm()) < 1e-3
