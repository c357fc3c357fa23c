"""The batch-loss Hessian shared by the engines that need it (curvature, adam), and the few
selected steps where they measure it.

A Hessian-vector product costs about two backward passes over the batch, so the Hessian
engines are what an analysis of a large model costs. Three things keep that bounded:

- `HESSIAN_TOKENS`: on token sequences the Hessian is taken on ⌊HESSIAN_TOKENS / T⌋ whole
  sequences of the batch (seeded; the engines report `batch_size`).
- `hessian_steps`: the Hessian is measured at `Settings.hessian_snapshots` (default 4) of the
  selected steps, the ones the rules compare: the onset, the last step before it, the quiet
  reference (the earliest) and the first step after the peak.
- `SharedHessian`: the gradient graph of one step is built once (`HVPOperator`) and used by
  both engines, and the products both need (H·g along the recorded gradient) are made once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from forensics.analyzer.window import spread
from forensics.math.hvp import HVPOperator

HESSIAN_TOKENS = 512
MEMO = 4  # products kept per step (H·g, H·u, H·P⁻¹g: the directional ones)


class SharedHessian:
    """The Hessian of the batch loss at one step: `op` (an `HVPOperator`, its graph built once),
    the `batch` it was taken on, `loss_fn(params) -> scalar` on that batch, the `params`, and
    `product(v)`, H·v remembered for the last few v (compared by value), so two engines asking
    for the same directional product pay for it once."""

    def __init__(self, replay, params: dict[str, Tensor], batch: dict[str, Tensor]) -> None:
        self.params, self.batch = params, batch
        self.loss_fn = lambda p: replay.loss(p, batch)
        self.op = HVPOperator(self.loss_fn, params)
        self._memo: list[tuple[Tensor, Tensor]] = []

    def product(self, v: Tensor) -> Tensor:
        """H·v for a flat vector v (op.dim,); a product already made for an equal v is reused."""
        for key, hv in self._memo:
            if key.shape == v.shape and key.dtype == v.dtype and torch.equal(key, v):
                return hv
        hv = self.op.matvec(v)
        self._memo = (self._memo + [(v.detach().clone(), hv)])[-MEMO:]
        return hv


def hessian_steps(window, peak: int, steps, n: int | None) -> tuple[int, ...]:
    """At most `n` of `steps` (the finite selected steps; None or 0: all), sorted, by priority:
    the onset, the last step before it, the quiet reference (the earliest step), the first step
    after the peak, the peak, then the others evenly spread."""
    steps = sorted(steps)
    if not n or len(steps) <= n:
        return tuple(steps)
    onset = window.onset if window.onset is not None else min(steps)
    before = [s for s in steps if s < onset]
    after = [s for s in steps if s > peak]
    order = [onset if onset in steps else None, before[-1] if before else None,
             before[0] if before else None, after[0] if after else None,
             peak if peak in steps else None]
    order += spread([s for s in steps if s not in order], n)
    chosen: list[int] = []
    for s in order:
        if s is not None and s not in chosen and len(chosen) < n:
            chosen.append(s)
    return tuple(sorted(chosen))
