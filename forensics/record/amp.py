"""float16 training with a `torch.amp.GradScaler`: steps the scaler skips are loop steps too.

`scaler.step(optimizer)` skips `optimizer.step()` when the unscaled gradients hold inf/NaN, so the
recorder's step hooks never see that step. `ScalerWatch` wraps the scaler's `step` (an instance
attribute, removed again by `remove()`): it reads the loss scale in force before the step, and when
`optimizer.step()` did not run it has the recorder record the step anyway, marked as skipped.
"""

from __future__ import annotations

from typing import Callable


class ScalerWatch:
    """Watch `scaler.step(optimizer)` for one optimizer.

    `count()` returns the recorder's step counter (advanced by its pre-hook); `on_skip()` records a
    step the scaler skipped. While it runs, `skipping` is True. `scale` is the loss scale of the
    latest step (float; None for a disabled scaler). One `.item()` per step (`get_scale`), next to
    the one the scaler itself does to decide the skip.
    """

    def __init__(self, scaler, optimizer, count: Callable[[], int], on_skip: Callable[[], None]):
        if not callable(getattr(scaler, "step", None)) or not callable(getattr(scaler, "get_scale", None)):
            raise ValueError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
        self.scaler, self.optimizer = scaler, optimizer
        self._count, self._on_skip = count, on_skip
        self.scale: float | None = None
        self.skipping = False
        self._inner = scaler.step
        scaler.step = self._step

    def _mine(self, optimizer) -> bool:
        seen = 0
        while optimizer is not None and seen < 8:
            if optimizer is self.optimizer:
                return True
            optimizer, seen = getattr(optimizer, "optimizer", None), seen + 1
        return False

    def _step(self, optimizer, *args, **kwargs):
        if not self._mine(optimizer):
            return self._inner(optimizer, *args, **kwargs)
        enabled = getattr(self.scaler, "is_enabled", lambda: True)()
        self.scale = float(self.scaler.get_scale()) if enabled else None
        before = self._count()
        out = self._inner(optimizer, *args, **kwargs)
        if self._count() == before:
            self.skipping = True
            try:
                self._on_skip()
            finally:
                self.skipping = False
        return out

    def columns(self) -> dict:
        """The step row's `amp_skipped` and `loss_scale`."""
        return {"amp_skipped": self.skipping, "loss_scale": self.scale}

    def remove(self) -> None:
        """Give the scaler its own `step` back (safe to call twice)."""
        if self.scaler.__dict__.get("step") == self._step:
            del self.scaler.step


__all__ = ["ScalerWatch"]
