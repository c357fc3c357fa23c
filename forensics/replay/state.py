"""Put a model and an optimizer in the state a snapshot recorded: θ_t, the param groups with
their hyperparameters, the moments and the step count before update t."""

from __future__ import annotations

import torch
from torch import nn

from forensics.replay.optimizer import build_optimizer


def load_params(model: nn.Module, params: dict[str, torch.Tensor], *, step: int | None = None) -> dict:
    """Copy the snapshot's `params` (name -> tensor) into `model`'s parameters (cast to their
    dtype and device); returns {name: Parameter}. Tied parameters are recorded once, under the
    name `named_parameters()` gives first, and are set once.

    Raises ValueError naming a parameter the snapshot lacks or whose shape differs.
    """
    named = dict(model.named_parameters())
    where = f"snapshot of step {step}" if step is not None else "snapshot"
    missing = sorted(set(named) - set(params))
    if missing:
        raise ValueError(f"{where} lacks parameters of the rebuilt model: {missing[:5]}")
    with torch.no_grad():
        for name, p in named.items():
            if p.shape != params[name].shape:
                raise ValueError(f"parameter {name}: {where} has shape {tuple(params[name].shape)}, "
                                 f"the model {tuple(p.shape)}")
            p.copy_(params[name])
    return named


def restore(model: nn.Module, snapshot, optimizer_cls: type, *, groups: list[dict] | None = None,
            state: dict | None = None, optimizer_step: int | None = None) -> torch.optim.Optimizer:
    """Load `snapshot` (a loaded `Snapshot`) into `model` and return an `optimizer_cls` in its
    recorded state. `groups` (default: the snapshot's `param_groups`), `state` and
    `optimizer_step` (default: the snapshot's) override what is loaded, e.g. for a counterfactual.

    Raises ValueError when the model and the snapshot disagree (see `load_params`, `build_optimizer`).
    """
    named = load_params(model, snapshot.params, step=snapshot.step)
    groups = groups if groups is not None else snapshot.meta["param_groups"]
    return build_optimizer(optimizer_cls, named, groups,
                           snapshot.state if state is None else state,
                           snapshot.meta.get("optimizer_step") if optimizer_step is None else optimizer_step)
