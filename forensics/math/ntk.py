"""Empirical NTK K = J Jᵀ of a model's outputs on a batch, its top eigenpairs, η_crit and the loss split.

Three ways to the same kernel (the test suite checks they agree with an explicit Jacobian):

- ``"structured"``: per-layer factorisation for nn.Linear stacks (:mod:`.ntk_structured`), fastest.
- ``"dense"``: the full Jacobian by ``torch.func.jacrev`` and K = Σ_params J Jᵀ, for small n.
- ``"matrix_free"``: K u = J (Jᵀ u) by two backward passes per product, plus Lanczos for the
  top-s eigenpairs, for large n with any architecture.

Multi-output models (c > 1 logits): by default the kernel is over the flattened logits, an
(n·c)×(n·c) matrix, sample-major (row i·c + a); the matching residual is ∂L/∂logits flattened
the same way (for MSE it is proportional to f − y). ``output_mode="trace"`` gives the n×n kernel
Σ_a J_a J_aᵀ instead (dense and structured only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from forensics.math.lanczos import lanczos
from forensics.math.ntk_structured import linear_layers, ntk_structured

__all__ = ["NTKOperator", "NTKResult", "ntk_dense", "empirical_ntk", "eta_crit", "loss_split",
           "output_residual"]

ModelFn = Callable[[dict[str, Tensor], Tensor], Tensor]


def ntk_dense(f: ModelFn, params: Mapping[str, Tensor], x: Tensor, *,
              output_mode: str = "flatten", per_sample: bool = True,
              chunk_size: int | None = None) -> Tensor:
    """K = Σ_p J_p J_pᵀ with J the explicit Jacobian of ``f(params, x)`` w.r.t. the parameters.

    ``per_sample=True`` (default): ``vmap(jacrev)`` over single samples, O(n·P) work — valid
    when samples do not interact (no train-mode batch norm). ``per_sample=False``: ``jacrev``
    of the whole batch, one batched backward per output row, O(n²·P) work but exact for any
    model. Memory is (n·c)×P either way; ``chunk_size`` bounds how many rows are built at once.
    """
    params = {k: v.detach() for k, v in params.items()}
    if per_sample:
        def single(p: dict[str, Tensor], xi: Tensor) -> Tensor:
            return f(p, xi.unsqueeze(0)).reshape(-1)  # (c,)

        jac = torch.func.vmap(torch.func.jacrev(single), in_dims=(None, 0),
                              chunk_size=chunk_size)(params, x)  # (n, c) + p.shape
    else:
        jac = torch.func.jacrev(lambda p: f(p, x), chunk_size=chunk_size)(params)
    n = x.shape[0]
    K = None
    for name, p in params.items():
        j = jac[name]  # out.shape + p.shape
        if output_mode == "flatten":
            jj = j.reshape(-1, p.numel())  # (n·c, P_l)
            term = jj @ jj.T
        elif output_mode == "trace":
            jj = j.reshape(n, -1, p.numel())  # (n, c, P_l)
            term = torch.einsum("iap,jap->ij", jj, jj)
        else:
            raise ValueError(f"output_mode must be 'flatten' or 'trace', got {output_mode!r}")
        K = term if K is None else K + term
    assert K is not None
    return K


class NTKOperator:
    """Matrix-free K u = J (Jᵀ u) over the flattened outputs of ``f(params, x)``.

    One forward builds the graph; Jᵀu is one backward through it. J w uses the double-vjp
    trick: g(z) = Jᵀz is built once with ``create_graph=True`` for a dummy z, and
    J w = ∂⟨g(z), w⟩/∂z is one backward through that graph — no forward recomputation
    (measured ~30% faster here than ``torch.func.jvp`` per product, and free of its quirks).
    ``num_matvecs`` counts products; ``dim`` = number of outputs.
    """

    def __init__(self, f: ModelFn, params: Mapping[str, Tensor], x: Tensor) -> None:
        self._inputs = [v.detach().clone().requires_grad_(True) for v in params.values()]
        with torch.enable_grad():
            out = f(dict(zip(params.keys(), self._inputs, strict=True)), x)
            self._z = torch.zeros_like(out, requires_grad=True)
            g = torch.autograd.grad(out, self._inputs, self._z, create_graph=True,
                                    allow_unused=True)
        self._out = out
        self._live = [i for i, gi in enumerate(g) if gi is not None and gi.requires_grad]
        self._g = [g[i] for i in self._live]
        self.outputs = out.detach()
        self.dim, self.dtype, self.device = out.numel(), out.dtype, out.device
        self.num_matvecs = 0

    def matvec(self, u: Tensor) -> Tensor:
        """K·u = J(Jᵀu) for u over the flattened outputs: a VJP, then a double-backward JVP."""
        self.num_matvecs += 1
        u = u.reshape(self._out.shape).to(device=self.device, dtype=self.dtype)
        if not self._live:
            return torch.zeros_like(u).reshape(-1)
        inputs = [self._inputs[i] for i in self._live]
        w = torch.autograd.grad(self._out, inputs, u, retain_graph=True)  # Jᵀu
        (ju,) = torch.autograd.grad(self._g, self._z, w, retain_graph=True)  # J (Jᵀu)
        return ju.reshape(-1).detach()

    __call__ = matvec


@dataclass
class NTKResult:
    """Top eigenpairs of the empirical NTK and how they were computed.

    eigenvalues (k,) descending float64; eigenvectors (N, k) with N = n·c (flatten) or n (trace);
    kernel: the dense K when the method produced one, else None; indices: the subsample of
    the batch rows used (None = all); n: samples used; n_total: batch size given.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    kernel: Tensor | None
    method: str
    n: int
    n_total: int
    indices: Tensor | None
    output_mode: str
    num_matvecs: int = 0


def empirical_ntk(model: nn.Module | ModelFn, params: Mapping[str, Tensor], x: Tensor, *,
                  k: int = 10, method: str = "auto", output_mode: str = "flatten",
                  max_samples: int | None = 1024, dense_max: int = 256, seed: int = 0,
                  tol: float = 1e-4, max_iter: int = 80, per_sample: bool = True) -> NTKResult:
    """Top-k eigenpairs of K = J Jᵀ on (a subsample of) the batch ``x``, choosing the method.

    ``model`` is an nn.Module (evaluated with ``functional_call``) or a function
    ``f(params, x)``. ``method="auto"``: structured when ``model`` is a Linear stack, else dense
    when n·c ≤ ``dense_max``, else matrix-free Lanczos. Rows beyond ``max_samples`` are
    subsampled at random (seeded); ``result.indices`` says which, so the residual can match.
    ``per_sample=False`` makes the dense path exact for models whose samples interact.
    """
    n_total = x.shape[0]
    idx = None
    if max_samples is not None and n_total > max_samples:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n_total, generator=gen)[:max_samples].sort().values
        x = x[idx.to(x.device)]
    n = x.shape[0]
    is_module = isinstance(model, nn.Module)
    f: ModelFn = (lambda p, xx: functional_call(model, p, (xx,))) if is_module else model
    K = None
    if method == "auto":
        if is_module and linear_layers(model) is not None:
            try:
                K = ntk_structured(model, x, params, output_mode=output_mode)
                method = "structured"
            except ValueError:  # e.g. a Linear called twice or on 3-D input: generic path
                pass
        if K is None:
            with torch.no_grad():
                n_out = f({k_: v.detach() for k_, v in params.items()}, x[:1]).numel() * n
            method = "dense" if (n_out <= dense_max or output_mode == "trace") else "matrix_free"
    if K is None and method == "matrix_free":
        if output_mode != "flatten":
            raise ValueError("matrix_free supports output_mode='flatten' only")
        op = NTKOperator(f, params, x)
        res = lanczos(op, k=min(k, op.dim), tol=tol, max_iter=max_iter, seed=seed)
        return NTKResult(res.eigenvalues, res.eigenvectors, None, method, n, n_total, idx,
                         output_mode, op.num_matvecs)
    if K is None and method == "structured":
        if not is_module:
            raise ValueError("method='structured' needs an nn.Module")
        K = ntk_structured(model, x, params, output_mode=output_mode)
    elif K is None and method == "dense":
        K = ntk_dense(f, params, x, output_mode=output_mode, per_sample=per_sample)
    elif K is None:
        raise ValueError(f"unknown method {method!r}")
    assert K is not None
    evals, evecs = torch.linalg.eigh(K.double())
    kk = min(k, K.shape[0])
    return NTKResult(evals.flip(0)[:kk], evecs.flip(1)[:, :kk].to(K.dtype), K, method, n, n_total,
                     idx, output_mode)


def eta_crit(lam_max: float, n: int, loss_scale: str = "half_mean") -> float:
    """Largest stable GD learning rate of the linearised model (Zhu et al., catapult; Lewkowycz 2020).

    For L = (a/2)‖F − y‖², GD on the linearised model is r ← (I − η a K) r, stable iff
    η < 2/(a λ_max(K)). ``"half_mean"``: L = (1/2n)‖r‖² (a = 1/n) → 2n/λ_max, the paper's form.
    ``"mean"``: L = (1/n)‖r‖², torch's ``mse_loss`` (a = 2/n) → n/λ_max. ``"half_sum"``:
    L = ½‖r‖² → 2/λ_max; ``"sum"``: L = ‖r‖² → 1/λ_max. ``n`` is the number of residual entries
    averaged over (n·c for a mean over all logits).
    """
    if lam_max <= 0:
        return float("inf")
    factor = {"half_mean": 2.0 * n, "mean": float(n), "half_sum": 2.0, "sum": 1.0}
    if loss_scale not in factor:
        raise ValueError(f"loss_scale must be one of {sorted(factor)}, got {loss_scale!r}")
    return factor[loss_scale] / lam_max


def loss_split(eigenvectors: Tensor, residual: Tensor, n: int | None = None) -> dict[str, float]:
    """PL_s = (1/n)‖U_sᵀ r‖², PL_s⊥ = (1/n)‖r‖² − PL_s (Zhu et al., catapult dynamics).

    ``eigenvectors`` (N, s) orthonormal columns (K's top-s), ``residual`` (N,) flattened like the
    kernel's rows; n defaults to N. A catapult shows PL_s jumping while PL_s⊥ barely moves.
    """
    r = residual.reshape(-1).to(eigenvectors.dtype)
    n = n or r.numel()
    total = float(r @ r) / n
    top = float((eigenvectors.T @ r).pow(2).sum()) / n
    return {"PL_s": top, "PL_s_perp": total - top, "total": total, "share_top": top / total
            if total > 0 else float("nan")}


def output_residual(loss_of_outputs: Callable[[Tensor], Tensor], outputs: Tensor, *,
                    n: int | None = None) -> Tensor:
    """r = n·∂L/∂F flattened like the kernel rows (sample-major), n = number of samples.

    For L = (1/2n)‖F − y‖² this is exactly F − y; for mean cross-entropy it is
    softmax(F) − onehot(y): the multi-output residual the loss split uses (module doc).
    """
    n = n or outputs.shape[0]
    out = outputs.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss_of_outputs(out), out)
    return (n * g).reshape(-1)
