"""Hessian-vector products of a scalar loss as a matrix-free operator on flat vectors.

Two forms of the product H v = d/dε ∇L(θ + ε v) (Pearlmutter 1994, "Fast exact multiplication
by the Hessian"):

- ``"double_backward"`` (default): build the gradient graph once with ``create_graph=True``,
  then each product is ``torch.autograd.grad(g, params, v, retain_graph=True)`` — a single
  backward through the stored graph. Fastest on the 2-core CPU (1M-param MLP, 512 samples:
  see ``benchmark_hvp`` and the math report; DESIGN.md measured ~42 ms vs ~60–67 ms).
- ``"func"``: forward-over-reverse ``torch.func.jvp(torch.func.grad(loss), (θ,), (v,))``,
  recomputed each call (PyHessian and cockpit use the double-backward form; neural-tangents
  and JAX use forward-over-reverse). torch 2.13 quirk: ``F.mse_loss`` fails under
  ``jvp(grad(...))`` with "ZeroTensors are immutable"; write the loss by hand
  (``((pred - y) ** 2).mean()``).

Attention: both forms run the loss with ``scaled_dot_product_attention`` on its math kernel
(``SDPBackend.MATH``, via :func:`twice_differentiable_attention`): the fused CPU and flash
kernels have no double backward ("derivative for
aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"), so a Hessian
through ``nn.TransformerEncoderLayer``, a Hugging Face GPT-2 or any SDPA model needs the math
path, on CPU and on CUDA.

The operator counts its products in ``num_matvecs`` so benchmarks can report HVP counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from forensics.math.flat import FlatSpec

__all__ = ["HVPOperator", "dense_hessian", "benchmark_hvp", "twice_differentiable_attention"]

LossFn = Callable[[dict[str, Tensor]], Tensor]
_METHODS = ("double_backward", "func")


def twice_differentiable_attention():
    """A context in which ``scaled_dot_product_attention`` runs on its math kernel, the one with
    a double backward (the fused CPU / flash / memory-efficient kernels have none)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


class HVPOperator:
    """Matrix-free Hessian of ``loss_fn`` at ``params``: ``matvec(v) = H v`` on flat vectors.

    Args:
        loss_fn: ``loss_fn(params_dict) -> scalar``; the batch is closed over
            (e.g. ``lambda p: loss(functional_call(model, p, (x,)), y)``).
        params: name -> tensor; copied and detached, the originals are not touched.
        method: ``"double_backward"`` (default, faster here) or ``"func"``.
        dtype: compute in this dtype (e.g. float32 for a bfloat16 snapshot); default: the
            parameters' own. The batch closed over by ``loss_fn`` must be compatible.

    Attributes:
        dim, dtype, device: of the flat vectors ``matvec`` takes and returns.
        num_matvecs: Hessian-vector products done so far.
        loss: the loss value at ``params`` (a float).
        grad: the flat gradient at ``params`` (free by-product of the double-backward graph).

    Example:
        >>> p = {"w": torch.tensor([1.0, 2.0])}
        >>> op = HVPOperator(lambda q: (q["w"] ** 2).sum() * 1.5, p)
        >>> op.matvec(torch.tensor([1.0, 0.0])).tolist()
        [3.0, 0.0]
    """

    def __init__(self, loss_fn: LossFn, params: Mapping[str, Tensor], *,
                 method: str = "double_backward", dtype: torch.dtype | None = None) -> None:
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if not params:
            raise ValueError("params is empty")
        self.method = method
        self.loss_fn = loss_fn
        self.spec = FlatSpec.from_params(params)
        first = next(iter(params.values()))
        self.dtype = dtype or first.dtype
        self.device = first.device
        self.dim = self.spec.dim
        self.num_matvecs = 0
        self._params = {n: t.detach().to(self.dtype, copy=True).requires_grad_(True)
                        for n, t in params.items()}
        if method == "double_backward":
            self._build_graph()
        else:
            self._grad_fn = torch.func.grad(lambda p: loss_fn(p))
            with torch.no_grad(), twice_differentiable_attention():
                self.loss = float(loss_fn(self._params))
            self._grad_flat: Tensor | None = None

    def _build_graph(self) -> None:
        with torch.enable_grad(), twice_differentiable_attention():
            loss = self.loss_fn(self._params)
            if loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
            inputs = list(self._params.values())
            grads = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
        self.loss = float(loss.detach())
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads, strict=True)]
        self._grad_flat = torch.cat([g.detach().reshape(-1) for g in grads])
        # Only gradient entries that still depend on θ contribute to H v.
        self._live = [i for i, g in enumerate(grads) if g.requires_grad]
        self._grads = grads

    @property
    def grad(self) -> Tensor:
        """Flat gradient ∇L(θ)."""
        if self._grad_flat is None:
            g = self._grad_fn(self._params)
            self._grad_flat = self.spec.flatten(g).detach()
        return self._grad_flat

    def matvec(self, v: Tensor) -> Tensor:
        """Return H v for a flat vector ``v`` (same dtype/device as the parameters)."""
        if v.shape != (self.dim,):
            raise ValueError(f"expected a vector of shape ({self.dim},), got {tuple(v.shape)}")
        v = v.to(device=self.device, dtype=self.dtype)
        self.num_matvecs += 1
        if self.method == "double_backward":
            return self._matvec_double_backward(v)
        return self._matvec_func(v)

    __call__ = matvec

    def _matvec_double_backward(self, v: Tensor) -> Tensor:
        if not self._live:
            return torch.zeros_like(v)
        vs = self.spec.split(v)
        inputs = list(self._params.values())
        hv = torch.autograd.grad([self._grads[i] for i in self._live], inputs,
                                 grad_outputs=[vs[i] for i in self._live],
                                 retain_graph=True, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if h is None else h).reshape(-1)
                          for p, h in zip(inputs, hv, strict=True)])

    def _matvec_func(self, v: Tensor) -> Tensor:
        primals = {n: t.detach() for n, t in self._params.items()}
        tangents = self.spec.unflatten(v)
        try:
            with twice_differentiable_attention():
                _, hv = torch.func.jvp(self._grad_fn, (primals,), (tangents,))
        except RuntimeError as err:
            if "ZeroTensors are immutable" not in str(err):
                raise
            raise ValueError("method='func' failed with the torch 2.13 ZeroTensor quirk; write the "
                             "loss by hand (no F.mse_loss) or use method='double_backward'") from err
        return self.spec.flatten(hv).detach()

    def to_dense(self) -> Tensor:
        """The full (dim, dim) Hessian by ``dim`` products — only for tiny models and tests."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)


def dense_hessian(loss_fn: LossFn, params: Mapping[str, Tensor]) -> Tensor:
    """Exact (dim, dim) Hessian via ``torch.autograd.functional.hessian`` on the flat vector.

    The oracle for tests; O(dim²) memory, so only for models of at most a few thousand parameters.
    """
    spec = FlatSpec.from_params(params)
    flat = spec.flatten({n: t.detach() for n, t in params.items()})
    return torch.autograd.functional.hessian(lambda x: loss_fn(spec.unflatten(x)), flat,
                                             vectorize=True)


def benchmark_hvp(loss_fn: LossFn, params: Mapping[str, Tensor], *, repeats: int = 10,
                  seed: int = 0) -> dict[str, float]:
    """Seconds per product for each method (after one warm-up), plus setup time.

    Returns ``{"<method>_s": ..., "<method>_setup_s": ...}`` for both methods.
    """
    out: dict[str, float] = {}
    gen = torch.Generator().manual_seed(seed)
    for method in _METHODS:
        t0 = time.perf_counter()
        op = HVPOperator(loss_fn, params, method=method)
        out[f"{method}_setup_s"] = time.perf_counter() - t0
        v = torch.randn(op.dim, generator=gen).to(op.device, op.dtype)
        op.matvec(v)
        _sync(op.device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            op.matvec(v)
        _sync(op.device)
        out[f"{method}_s"] = (time.perf_counter() - t0) / repeats
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
