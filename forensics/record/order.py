"""Tell which step an `observe()` call reports when it may come before or after `optimizer.step()`.

The step pre-hook always captures step t (weights before update t, the gradient of batch t, the
moments before update t). If `observe(loss_t, batch_t)` came first, step t is complete there.
If not, step t waits for its loss; the next `observe()` reports step t (called after `step()`,
as frameworks' batch-end hooks are) unless a backward pass has run since step t's capture, in
which case it reports the *next* step (called before `step()`, and step t simply had no observe).
A backward pass is seen by a post-accumulate-grad hook on one trainable parameter: zeroing the
gradients, a scheduler step or anything else between step() and observe() does not count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CapturedStep:
    """A step captured by the pre-hook: its ring slot, its row without the loss, what detection needs."""

    t: int
    slot: int | None  # ring slot, None when not captured
    probe: float | None
    row: dict  # the step row, loss and spike_id still to fill in
    events: list | None  # detector events when the loss was known at capture, else None
    backwards: int  # BackwardCounter.count at capture


class BackwardCounter:
    """Counts gradient accumulations into one trainable parameter (one per backward pass reaching it)."""

    def __init__(self, params: list[torch.Tensor]):
        self.count = 0
        self._handle = None
        p = next((p for p in params if p.requires_grad), None)
        if p is not None and hasattr(p, "register_post_accumulate_grad_hook"):
            self._handle = p.register_post_accumulate_grad_hook(self._hit)

    def _hit(self, param) -> None:
        self.count += 1

    def remove(self) -> None:
        """Detach the backward hook (safe to call twice)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


__all__ = ["BackwardCounter", "CapturedStep"]
