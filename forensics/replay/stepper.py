"""The replay primitive: from a model and optimizer in a recorded state, re-run recorded steps.

One step t is what the training loop did: loss of batch t at θ_t, backward, (clip), optimizer
step with the hyperparameters in force for step t. Everything a step needs is in a `StepInput`,
so the same loop serves the no-change self-check, a counterfactual (the caller edits the
inputs) and a keyframe recorder recomputing the states between two keyframes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from forensics.replay.optimizer import set_hparams


@dataclass
class StepInput:
    """What step `step` consumes.

    batch: the recorded batch entries (tensors on the replay device).
    groups: hyperparameters of every param group in force for this update (lr, betas, ...).
    clip: max-norm the gradients are clipped to before the update (None: no clipping).
    skip: do not train on this batch (no forward, no update; the optimizer does not count it).
    optimizer_state: when not None, the optimizer state is replaced before this step by
        `(state {kind: {name: tensor}}, step count)` — the recorded state, e.g. at a reset.
    """

    step: int
    batch: dict[str, torch.Tensor]
    groups: list[dict]
    clip: float | None = None
    skip: bool = False
    optimizer_state: tuple | None = None


@dataclass
class StepOutcome:
    """What a replayed step produced: the loss of batch t at θ_t (NaN when skipped), the norm
    of the gradient the optimizer saw (after clipping), and whether it was skipped."""

    step: int
    loss: float
    grad_norm: float = math.nan
    skipped: bool = False
    extra: dict = field(default_factory=dict)


def replay_steps(model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 keys: tuple[str, str], inputs: Iterable[StepInput], *,
                 before: Callable[[StepInput, nn.Module, torch.optim.Optimizer], dict | None] | None = None,
                 load_state: Callable[[torch.optim.Optimizer, tuple], None] | None = None,
                 ) -> list[StepOutcome]:
    """Re-run `inputs` in order on `model` (training mode) and `optimizer`; return one outcome each.

    keys: (input key, target key) of the batch: loss = loss_fn(model(batch[input]), batch[target]).
    before(inp, model, optimizer): called before each step with θ_t in the model (e.g. to
        compare with a recorded snapshot or to evaluate a reference loss); a dict it returns
        is kept in the outcome's `extra`.
    load_state(optimizer, state): how to apply `StepInput.optimizer_state` (required when any
        input carries one).

    A non-finite loss is recorded and the step still taken, as the training loop did.
    Raises KeyError naming a batch entry that is missing.
    """
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    out: list[StepOutcome] = []
    x_key, y_key = keys
    for inp in inputs:
        if inp.optimizer_state is not None:
            if load_state is None:
                raise ValueError(f"step {inp.step} carries an optimizer state but no load_state was given")
            load_state(optimizer, inp.optimizer_state)
        extra = (before(inp, model, optimizer) or {}) if before is not None else {}
        if inp.skip:
            out.append(StepOutcome(inp.step, math.nan, skipped=True, extra=extra))
            continue
        for k in (x_key, y_key):
            if k not in inp.batch:
                raise KeyError(f"step {inp.step}: batch has no entry {k!r} (has {sorted(inp.batch)})")
        set_hparams(optimizer, inp.groups)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inp.batch[x_key]), inp.batch[y_key])
        loss.backward()
        if inp.clip is not None:
            torch.nn.utils.clip_grad_norm_(params, inp.clip)
        grads = [p.grad for p in params if p.grad is not None]
        gnorm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) \
            if grads else 0.0
        optimizer.step()
        out.append(StepOutcome(inp.step, float(loss.detach()), gnorm, extra=extra))
    return out
