"""Empirical NTK of a stack of nn.Linear layers by the per-layer factorisation (structured derivatives).

For a Linear layer z = W a + b applied per sample, the Jacobian of output o_i w.r.t. W is
B_l[i] ⊗ A_{l−1}[i] (B = ∂o/∂z back-propagated to the layer output, A = the layer input), so

    K = J Jᵀ = Σ_l (A_{l−1} A_{l−1}ᵀ + 1[bias]) ⊙ (B_l B_lᵀ)

(Novak et al. 2022, "Fast Finite Width Neural Tangent Kernel" — what neural-tangents calls
structured derivatives). Cost: one forward and c backward passes plus n×n products per layer,
instead of the full (n·c)×P Jacobian: DESIGN.md measured 0.18 s vs 15.7 s at n = 1024 on a 1M MLP.

Valid when every module owning parameters is an ``nn.Linear`` called once per forward on 2-D
input (n, d_in), and samples do not interact (no batch norm: it owns parameters, so it is
rejected; parameter-free cross-sample ops are the caller's responsibility).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["linear_layers", "ntk_structured"]


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]] | None:
    """The model's (name, Linear) modules if all parametrised modules are Linear, else None."""
    layers = []
    for name, mod in model.named_modules():
        if next(mod.parameters(recurse=False), None) is None:
            continue
        if not isinstance(mod, nn.Linear):
            return None
        layers.append((name, mod))
    return layers or None


def ntk_structured(model: nn.Module, x: Tensor, params: Mapping[str, Tensor] | None = None, *,
                   output_mode: str = "flatten") -> Tensor:
    """Empirical NTK over the parameters in ``params`` (default: all of the model's).

    Outputs of shape (n,), (n, 1) or (n, c). ``output_mode="flatten"``: K is (n·c, n·c) over the
    flattened logits, sample-major (row i·c + a); ``"trace"``: (n, n), Σ_a J_a J_aᵀ.
    Raises ValueError if the model is not a Linear stack used as described in the module doc.
    """
    if output_mode not in ("flatten", "trace"):
        raise ValueError(f"output_mode must be 'flatten' or 'trace', got {output_mode!r}")
    layers = linear_layers(model)
    if layers is None:
        raise ValueError("structured NTK needs every parametrised module to be nn.Linear")
    if params is None:
        params = dict(model.named_parameters())
    params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    out, inputs, outputs = _forward_recording(model, x, params, layers)
    n = x.shape[0]
    if out.shape[0] != n or out.dim() > 2:
        raise ValueError(f"outputs must be (n,) or (n, c), got {tuple(out.shape)}")
    out2 = out.reshape(n, -1)  # (n, c)
    c = out2.shape[1]
    used = _used_layers(layers, params, inputs, outputs, n)
    # 1. B per layer per output: c backward passes through the stored graph
    zs = [z for *_, z in used]
    backs: list[list[Tensor]] = [[] for _ in used]  # [layer][a] -> (n, d_out)
    for a_idx in range(c):
        onehot = torch.zeros_like(out2)
        onehot[:, a_idx] = 1
        grads = torch.autograd.grad(out2, zs, grad_outputs=onehot, retain_graph=a_idx < c - 1,
                                    allow_unused=True)
        for li, g in enumerate(grads):
            backs[li].append(torch.zeros_like(zs[li]) if g is None else g.detach())
    # 2. K = Σ_l (A Aᵀ + 1) ⊙ (B Bᵀ)
    size = n * c if output_mode == "flatten" else n
    K = torch.zeros(size, size, dtype=out.dtype, device=out.device)
    for (a, has_w, has_b, _), bl in zip(used, backs, strict=True):
        gram_a = torch.zeros(n, n, dtype=out.dtype, device=out.device)
        if has_w:
            gram_a += a @ a.T
        if has_b:
            gram_a += 1
        if output_mode == "flatten":
            B = torch.stack(bl, dim=1).reshape(n * c, -1)  # (n·c, d_out), sample-major
            K += gram_a.repeat_interleave(c, 0).repeat_interleave(c, 1) * (B @ B.T)
        else:
            K += gram_a * sum(b @ b.T for b in bl)
    return K


def _forward_recording(model, x, params, layers):
    """Run the model once, keeping each Linear layer's input (detached) and output (in the graph)."""
    inputs: dict[str, list[Tensor]] = {n: [] for n, _ in layers}
    outputs: dict[str, list[Tensor]] = {n: [] for n, _ in layers}

    def hook(name):
        def fn(_mod, inp, out):
            inputs[name].append(inp[0].detach())
            outputs[name].append(out)
            return out.clone()  # later in-place ops must not touch the tensor we differentiate to
        return fn

    handles = [mod.register_forward_hook(hook(n)) for n, mod in layers]
    try:
        with torch.enable_grad():
            out = functional_call(model, params, (x,))
    finally:
        for h in handles:
            h.remove()
    return out, inputs, outputs


def _used_layers(layers, params, inputs, outputs, n: int) -> list:
    """(A (n, d_in), has_weight, has_bias, z) for each layer with a parameter in `params`."""
    used = []
    for name, mod in layers:
        w_key, b_key = f"{name}.weight" if name else "weight", f"{name}.bias" if name else "bias"
        has_w, has_b = w_key in params, (mod.bias is not None and b_key in params)
        if not (has_w or has_b):
            continue
        if len(outputs[name]) != 1:
            raise ValueError(f"layer {name!r} called {len(outputs[name])} times; need exactly once")
        a, z = inputs[name][0], outputs[name][0]
        if a.dim() != 2 or a.shape[0] != n:
            raise ValueError(f"layer {name!r} input is {tuple(a.shape)}; need (n, d_in)")
        used.append((a, has_w, has_b, z))
    return used
