"""Plumbing shared by the framework adapters: micro-batch accumulation, closures run early, grad norms."""

from __future__ import annotations

import torch

from forensics.record.micro import MicroBatches  # noqa: F401  (moved; the adapters import it from here)


def unwrap_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers such as accelerate's `AcceleratedOptimizer` or
    `LightningOptimizer`."""
    seen = 0
    while not _is_plain(optimizer) and seen < 8:
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if inner is None:
            break
        optimizer, seen = inner, seen + 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"spike forensics needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return optimizer


def _is_plain(opt) -> bool:
    inner = getattr(opt, "optimizer", None)
    return isinstance(opt, torch.optim.Optimizer) and not isinstance(inner, torch.optim.Optimizer)


def grad_norm(params) -> float:
    """‖g‖₂ over the parameters that have a gradient (float32 accumulation)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(g.detach(), dtype=torch.float32) for g in grads])))


def grad_absmax(params) -> float:
    """max |g| over the parameters that have a gradient."""
    grads = [p.grad.detach().abs().max() for p in params if p.grad is not None and p.grad.numel()]
    return float(torch.stack(grads).max()) if grads else 0.0


def run_closure_first(before=None):
    """A step pre-hook that runs `optimizer.step(closure)`'s closure before the later pre-hooks.

    `torch.optim` calls step pre-hooks *before* `step()` evaluates its closure, so a hook that
    reads `p.grad` sees the previous step's gradients whenever the closure does the backward
    (Lightning's automatic optimization). Registered before the Recorder's own hook, this hook
    evaluates the closure (forward, backward, Lightning's `on_before_optimizer_step`, clipping)
    first, then hands `step()` a closure that returns the result already computed, so the
    Recorder captures exactly the gradient the update uses. Further closure calls (LBFGS line
    search) run the real closure.
    """

    def hook(optimizer, args, kwargs):
        if "closure" in kwargs and kwargs["closure"] is not None:
            closure, where = kwargs["closure"], "kw"
        elif len(args) > 1 and callable(args[1]):
            closure, where = args[1], "pos"
        else:
            return None
        if before is not None:
            before()
        with torch.enable_grad():
            result = closure()
        calls = [0]

        def replay_closure():
            calls[0] += 1
            return result if calls[0] == 1 else closure()

        if where == "kw":
            return args, {**kwargs, "closure": replay_closure}
        return (args[0], replay_closure, *args[2:]), kwargs

    return hook
