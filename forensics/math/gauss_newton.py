"""The loss form from the loss itself: its residual and output Hessian, and the Gauss–Newton matrix.

For a loss L(F) of the model outputs F = f(θ; X), the Hessian splits as JᵀH_outJ + Σ ∂L/∂F·∇²F
(J = ∂F/∂θ, H_out = ∂²L/∂F²). The first term, the Gauss–Newton matrix G, governs the
linearised model: one GD step maps the output error by (I − η H_out J Jᵀ), so GD on the
linearised model is stable iff η < η_crit = 2/λ_max(G). For L = (1/2n)‖F − y‖² (H_out = I/n)
this is the catapult paper's 2n/λ_max(K) with K = JJᵀ (Lewkowycz et al. 2020, arXiv 2003.02218;
Zhu et al. 2023, arXiv 2306.04815); for torch's mean MSE over N entries (H_out = 2I/N) it is
N/λ_max(K); for a summed MSE 1/λ_max(K); for cross-entropy H_out is per sample
(diag(p) − ppᵀ)/n. Nothing about the loss is assumed: ∂L/∂F and H_out·u come from autograd.

`GaussNewtonOperator` is G as a matrix-free operator on flat parameter vectors (for
`forensics.math.lanczos`): Jv by the double-vjp trick (as `NTKOperator`), H_out(Jv) by a
double backward through the loss, Jᵀ(·) by one backward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

__all__ = ["GaussNewtonOperator", "loss_residual"]

ModelFn = Callable[[dict[str, Tensor], Tensor], Tensor]


def loss_residual(loss_of_outputs: Callable[[Tensor], Tensor], outputs: Tensor) -> Tensor:
    """∂L/∂F at `outputs`, same shape as `outputs` (the residual of any loss: for
    L = (1/2n)‖F − y‖² it is (F − y)/n, for mean cross-entropy (softmax(F) − onehot(y))/n)."""
    out = outputs.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss_of_outputs(out), out)
    return g


class GaussNewtonOperator:
    """G = JᵀH_outJ of `loss_of_outputs(f(params, x))` at `params`, on flat parameter vectors.

    Args:
        f: `f(params_dict, x) -> outputs` (e.g. `functional_call` of a module).
        params: name -> tensor (detached copies are used).
        x: the batch input.
        loss_of_outputs: `outputs -> scalar loss` (the targets closed over).

    Attributes: dim, dtype, device (of the flat vectors), num_matvecs, outputs (detached),
    loss (float), residual (∂L/∂F, detached, outputs' shape). Raises whatever the model or
    the loss raise (e.g. RuntimeError when the loss has no second derivative).
    """

    def __init__(self, f: ModelFn, params: Mapping[str, Tensor], x: Tensor,
                 loss_of_outputs: Callable[[Tensor], Tensor]) -> None:
        self._inputs = [v.detach().clone().requires_grad_(True) for v in params.values()]
        with torch.enable_grad():
            out = f(dict(zip(params.keys(), self._inputs, strict=True)), x)
            self._z = torch.zeros_like(out, requires_grad=True)
            g = torch.autograd.grad(out, self._inputs, self._z, create_graph=True,
                                    allow_unused=True)
            self._leaf = out.detach().requires_grad_(True)
            loss = loss_of_outputs(self._leaf)
            (self._gout,) = torch.autograd.grad(loss, self._leaf, create_graph=True)
        self._out = out
        self._live = [i for i, gi in enumerate(g) if gi is not None and gi.requires_grad]
        self._g = [g[i] for i in self._live]
        self._sizes = [p.numel() for p in self._inputs]
        self.outputs = out.detach()
        self.loss = float(loss.detach())
        self.residual = self._gout.detach()
        self.dim = sum(self._sizes)
        self.dtype, self.device = self._inputs[0].dtype, self._inputs[0].device
        self.num_matvecs = 0

    def matvec(self, v: Tensor) -> Tensor:
        """G v for a flat parameter vector v (dim,)."""
        self.num_matvecs += 1
        v = v.to(device=self.device, dtype=self.dtype)
        parts = torch.split(v, self._sizes)
        if not self._live:
            return torch.zeros_like(v)
        (jv,) = torch.autograd.grad(self._g, self._z, [parts[i].reshape(self._inputs[i].shape)
                                                       for i in self._live], retain_graph=True)
        if not self._gout.requires_grad:  # a loss linear in the outputs: H_out = 0
            return torch.zeros_like(v)
        (hjv,) = torch.autograd.grad(self._gout, self._leaf, jv, retain_graph=True)
        back = torch.autograd.grad(self._out, self._inputs, hjv, retain_graph=True,
                                   allow_unused=True)
        return torch.cat([(b if b is not None else torch.zeros_like(p)).reshape(-1)
                          for b, p in zip(back, self._inputs, strict=True)]).detach()

    __call__ = matvec
