"""Rebuild a recorded optimizer: its class (resolved only among torch.optim's own classes), its
param groups by parameter name, its hyperparameters, moments and step count.

`run.json` is a stranger's file, so the class it names is never imported: it is looked up among
the subclasses of `torch.optim.Optimizer` that torch itself defines (module `torch.optim...`).
A custom optimizer needs `allow_import=True` (the user's consent) or a live class passed in.
"""

from __future__ import annotations

from typing import Any

import torch

# keys of a recorded param group that are not hyperparameters to set back
_NOT_HPARAMS = ("params",)


def torch_optimizers() -> dict[str, type]:
    """{class path: class} of every Optimizer subclass defined inside torch.optim (both the
    defining module's path, e.g. torch.optim.adam.Adam, and the public torch.optim.Adam)."""
    found: dict[str, type] = {}
    todo = list(torch.optim.Optimizer.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("torch.optim"):
            found[f"{cls.__module__}.{cls.__qualname__}"] = cls
            if getattr(torch.optim, cls.__name__, None) is cls:
                found[f"torch.optim.{cls.__name__}"] = cls
    return found


def resolve_optimizer_class(class_path: str, *, allow_import: bool = False) -> type:
    """The optimizer class named `class_path` in run.json.

    Without `allow_import`, only torch.optim's own classes resolve (nothing is imported by
    path). With it, `package.module.Class` is imported (the user trusts the run).

    Raises:
        PermissionError: not a torch.optim class and `allow_import` is False.
        ValueError: malformed path, or the import fails / names no Optimizer subclass.
    """
    known = torch_optimizers()
    if class_path in known:
        return known[class_path]
    if not allow_import:
        raise PermissionError(
            f"optimizer {class_path!r} from run.json is not one of torch.optim's own classes; "
            f"resolving it would import code named in the run: pass allow_import=True "
            f"(--allow-import) if you trust this run, or replay with a live optimizer class")
    import importlib

    module, _, name = class_path.rpartition(".")
    if not module or not name.isidentifier():
        raise ValueError(f"optimizer class path {class_path!r} is not 'package.module.Class'")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import optimizer {class_path!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"{class_path!r} is not a torch.optim.Optimizer subclass")
    return cls


def number(value: Any) -> Any:
    """A recorded hyperparameter back to Python: "nan"/"inf" strings to floats, lists kept."""
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "+inf"):
        return float(value)
    if isinstance(value, list):
        return tuple(number(v) for v in value)
    return value


def hparams(group: dict) -> dict:
    """A recorded param group's hyperparameters (without `params`), ready to set."""
    return {k: number(v) for k, v in group.items() if k not in _NOT_HPARAMS}


def set_hparams(optimizer: torch.optim.Optimizer, groups: list[dict]) -> None:
    """Put `groups` (one dict of hyperparameters per param group, in order) in force.

    Raises ValueError when the number of groups differs from the optimizer's.
    """
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(f"{len(groups)} recorded param groups for an optimizer with "
                         f"{len(optimizer.param_groups)}")
    for live, rec in zip(optimizer.param_groups, groups, strict=True):
        for k, v in hparams(rec).items():
            if isinstance(live.get(k), torch.Tensor):  # e.g. a tensor lr: keep its kind
                live[k].fill_(v)
            else:
                live[k] = v


def build_optimizer(cls: type, named: dict[str, torch.nn.Parameter], groups: list[dict],
                    state: dict[str, dict[str, torch.Tensor]],
                    optimizer_step: int | None) -> torch.optim.Optimizer:
    """An optimizer of class `cls` over the parameters `named` (name -> Parameter), with the
    recorded `groups` (hyperparameters + `params`: names), per-parameter `state`
    ({kind: {name: tensor}}, e.g. exp_avg, momentum_buffer) and step count, loaded through the
    optimizer's own `load_state_dict` (it casts the state to each parameter's device/dtype).

    State is loaded only after at least one update (`optimizer_step` > 0): before it the
    optimizer initialises lazily, as it did in training.

    Raises ValueError when a group names a parameter the model lacks.
    """
    torch_groups = []
    for g in groups:
        missing = [n for n in g.get("params", []) if n not in named]
        if missing:
            raise ValueError(f"recorded param group names parameters the model lacks: {missing[:5]}")
        torch_groups.append({"params": [named[n] for n in g["params"]], **hparams(g)})
    opt = cls(torch_groups)
    order = [n for g in groups for n in g["params"]]
    per_param: dict[int, dict] = {}
    if optimizer_step and state:
        for i, name in enumerate(order):
            entry = {kind: tensors[name] for kind, tensors in state.items() if name in tensors}
            if entry:
                entry["step"] = torch.tensor(float(optimizer_step))
                per_param[i] = entry
    saved_groups, i = [], 0
    for g in groups:
        ids = list(range(i, i + len(g["params"])))
        i += len(ids)
        saved_groups.append({**hparams(g), "params": ids})
    opt.load_state_dict({"state": per_param, "param_groups": saved_groups})
    return opt

