"""What the recorder needs to know about an optimizer: its state kinds, step count and hyperparameters."""

from __future__ import annotations

import json

import torch

from forensics.rundir.jsonsafe import jsonsafe
from forensics.rundir.manifest import class_path

_ADAM_FAMILY = ("Adam", "AdamW")
_HPARAM_KEYS = ("lr", "eps", "weight_decay", "momentum", "dampening")


def is_adam(optimizer) -> bool:
    """Whether the optimizer is torch's Adam or AdamW (or a subclass): state exp_avg, exp_avg_sq."""
    return any(c.__name__ in _ADAM_FAMILY and c.__module__.startswith("torch.optim")
               for c in type(optimizer).__mro__)


def is_sgd(optimizer) -> bool:
    """Whether the optimizer is torch's SGD (or subclasses it), whose only state is momentum_buffer."""
    return any(c.__name__ == "SGD" and c.__module__.startswith("torch.optim")
               for c in type(optimizer).__mro__)


def state_kinds(optimizer) -> tuple[list[str], bool]:
    """(per-parameter state names known up front, whether the optimizer is known).

    Adam/AdamW: exp_avg, exp_avg_sq (+ max_exp_avg_sq with amsgrad); SGD: momentum_buffer when
    any group has momentum. Unknown optimizers: [] and False (state is discovered as it appears).
    """
    if is_adam(optimizer):
        kinds = ["exp_avg", "exp_avg_sq"]
        if any(g.get("amsgrad", False) for g in optimizer.param_groups):
            kinds.append("max_exp_avg_sq")
        return kinds, True
    if is_sgd(optimizer):
        momentum = any(g.get("momentum", 0) for g in optimizer.param_groups)
        return (["momentum_buffer"] if momentum else []), True
    return [], False


def discover_state_kinds(optimizer, params: list[torch.Tensor]) -> list[str]:
    """Names of per-parameter state tensors shaped like their parameter (unknown optimizers)."""
    found = []
    for p in params:
        for key, v in optimizer.state.get(p, {}).items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and key not in found:
                found.append(key)
    return found


def state_tensors(optimizer, params: list[torch.Tensor], kinds) -> dict:
    """`{kind: [the optimizer's state tensor of kind for each param, or None]}` for the kinds other than
    param and grad."""
    return {kind: [optimizer.state.get(p, {}).get(kind) for p in params] for kind in kinds
            if kind not in ("param", "grad")}


def optimizer_step(optimizer, first_param, fallback: int, adam: bool = False) -> int:
    """The optimizer's own count of updates done (Adam's state["step"]); 0 for an Adam whose state
    holds no step (fresh, or cleared: its next update is its first); else `fallback`."""
    st = optimizer.state.get(first_param) if first_param is not None else None
    if st and "step" in st:
        s = st["step"]
        return int(s.item() if isinstance(s, torch.Tensor) else s)
    return 0 if adam else fallback


def _scalar(v):
    return float(v.item()) if isinstance(v, torch.Tensor) else v


def group_hparams(optimizer) -> list[dict]:
    """Every hyperparameter of every param group now in force (without the params), JSON-able."""
    return [{k: jsonsafe(_scalar(v)) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def _number(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def hparam_columns(groups: list[dict]) -> dict:
    """steps/ columns of the hyperparameters in force (docs/format.md): group 0's `beta1`, `beta2`,
    `eps`, `weight_decay`, `momentum` (None where the optimizer has no such key) and `param_groups`,
    a compact JSON list of every group's `{lr, beta1, beta2, eps, weight_decay, momentum, dampening}`.
    Python floats from `optimizer.param_groups`: no device sync."""
    flat = []
    for g in groups:
        betas = g.get("betas")
        b = betas if isinstance(betas, (list, tuple)) and len(betas) == 2 else (None, None)
        row = {"lr": _number(g.get("lr")), "beta1": _number(b[0]), "beta2": _number(b[1])}
        row.update({k: _number(g.get(k)) for k in ("eps", "weight_decay", "momentum", "dampening")})
        flat.append({k: v for k, v in row.items() if v is not None})
    g0 = flat[0] if flat else {}
    cols = {k: g0.get(k) for k in ("beta1", "beta2", "eps", "weight_decay", "momentum")}
    cols["param_groups"] = json.dumps(flat, separators=(",", ":"), allow_nan=True)
    return cols


def snapshot_hparams(optimizer, groups: list[dict]) -> dict:
    """Group-0 hyperparameters as snapshot metadata keys (docs/format.md)."""
    g0 = groups[0] if groups else {}
    meta = {k: g0[k] for k in _HPARAM_KEYS
            if k in g0 and isinstance(g0[k], (int, float)) and not isinstance(g0[k], bool)}
    if "betas" in g0:
        meta["betas"] = list(g0["betas"])
    if is_adam(optimizer):
        decoupled = g0.get("decoupled_weight_decay")
        if decoupled is None:
            decoupled = isinstance(optimizer, torch.optim.AdamW)
        meta["decoupled_weight_decay"] = bool(decoupled)
    return meta


__all__ = ["class_path", "is_adam", "is_sgd", "state_kinds", "state_tensors", "discover_state_kinds",
           "optimizer_step", "group_hparams", "hparam_columns", "snapshot_hparams"]
