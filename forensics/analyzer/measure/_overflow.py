"""float16 overflow in a replayed forward pass: which module's output first passes the float16
maximum. Not an engine (the `numerical` engine calls it)."""

from __future__ import annotations

import torch

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504: larger values are inf in float16


def module_maxima(replay, params: dict, x: torch.Tensor) -> list[tuple[str, float, bool]]:
    """Replay the forward pass at `params` on input `x` with a forward hook on every module and
    return (module name, max |output| over its floating-point output tensors, whether that output
    is the model's output) in the order the modules finished, the root module (name "") last.
    Runs in the replay's dtype (float32 by default), so a value past `FP16_MAX` is measured, not
    turned into inf; inf/NaN outputs count as inf."""
    order: list[tuple[str, float, torch.Tensor | None]] = []

    def hook(name):
        def record(module, args, out):
            tensors = [t for t in (out if isinstance(out, (tuple, list)) else (out,))
                       if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
            if tensors:
                top = max(float(torch.nan_to_num(t.detach().abs(), nan=float("inf")).max()) for t in tensors)
                order.append((name, top, tensors[0]))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in replay.model.named_modules()]
    try:
        with torch.no_grad():
            out = replay.outputs(params, x)
    finally:
        for h in handles:
            h.remove()
    return [(name, top, t is out or (t is not None and t.shape == out.shape and torch.equal(t, out)))
            for name, top, t in order]


def first_overflow(replay, params: dict, x: torch.Tensor) -> dict:
    """The first module (in the order modules finish) whose output passes FP16_MAX, with the
    largest output seen and how many modules pass (`module` None when none does)."""
    maxima = module_maxima(replay, params, x)
    over = [(n, v, is_out) for n, v, is_out in maxima if v > FP16_MAX]
    if not over:
        return {"module": None, "max_output": max((v for _, v, _ in maxima), default=0.0), "over": 0}
    name, value, is_out = over[0]
    kind = type(replay.model.get_submodule(name)).__name__ if name else type(replay.model).__name__
    return {"module": name or "<model>", "kind": kind, "value": value, "is_output": is_out,
            "max_output": max(v for _, v, _ in maxima), "over": len({n for n, _, _ in over})}
