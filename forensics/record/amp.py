"""float16 training with a `torch.amp.GradScaler`: steps the scaler skips are loop steps too.

`scaler.step(optimizer)` skips `optimizer.step()` when the unscaled gradients hold inf/NaN, so the
recorder's step hooks never see that step: it would vanish from `steps/` and every later step
number would drift from the loop's. Two ways to see it:

- explicit (`Recorder(..., scaler=scaler)`, and the Lightning/HF adapters, which pass the
  framework's scaler): `ScalerWatch` wraps that scaler's `step` (an instance attribute, removed
  again by `remove()`);
- automatic (no `scaler=`): `AutoScalerWatch` registers the recorder's optimizer, and while any
  is registered `torch.amp.GradScaler.step` itself (the class attribute, which
  `torch.cuda.amp.GradScaler` and FSDP's `ShardedGradScaler` inherit) is wrapped: a call for a
  registered optimizer (or a wrapper of it: `.optimizer` chains, as Lightning's and accelerate's
  optimizers) is watched as above, any other call passes straight through. The class is given
  its own `step` back when the last watch is removed. A scaler whose `step` is not GradScaler's
  (another library's loss scaler) is not seen: pass it as `scaler=`.

Either way the watch reads the loss scale in force for the step (the one its backward pass was
scaled with) before `step` runs; when `optimizer.step()` did not run, the scaler found inf/NaN
in the gradients (`found_inf`: it skips exactly then), and the watch has the recorder record the
step anyway, marked `amp_skipped` with that scale. One `.item()` per step (`get_scale`), next to
the one the scaler itself does to decide the skip.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable

import torch


def _unwraps_to(optimizer, target) -> bool:
    """Whether `optimizer` is `target` or wraps it through `.optimizer` attributes (a few levels)."""
    seen = 0
    while optimizer is not None and seen < 8:
        if optimizer is target:
            return True
        optimizer, seen = getattr(optimizer, "optimizer", None), seen + 1
    return False


class ScalerWatch:
    """Watch `scaler.step(optimizer)` for one optimizer.

    `count()` returns the recorder's step counter (advanced by its pre-hook); `on_skip()` records a
    step the scaler skipped. While it runs, `skipping` is True. `scale` is the loss scale of the
    latest step (float; None for a disabled scaler). Raises ValueError when `scaler` has no
    callable `step` and `get_scale` (not a GradScaler).
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

    def _step(self, optimizer, *args, **kwargs):
        if not _unwraps_to(optimizer, self.optimizer):
            return self._inner(optimizer, *args, **kwargs)
        return self.watch(self.scaler, lambda: self._inner(optimizer, *args, **kwargs))

    def watch(self, scaler, run: Callable):
        """Run `run()` (the scaler's own step) for this optimizer, recording the step if it skipped."""
        enabled = getattr(scaler, "is_enabled", lambda: True)()
        self.scale = float(scaler.get_scale()) if enabled else None
        before = self._count()
        out = run()
        if self._count() == before:
            self.skipping = True
            try:
                self._on_skip()
            finally:
                self.skipping = False
        return out

    def columns(self) -> dict:
        """The step row's `amp_skipped` (the scaler's found-inf) and `loss_scale`."""
        return {"amp_skipped": self.skipping, "loss_scale": self.scale}

    def remove(self) -> None:
        """Give the scaler its own `step` back (safe to call twice)."""
        if self.scaler.__dict__.get("step") == self._step:
            del self.scaler.step


_LOCK = threading.Lock()
_AUTO: weakref.WeakSet = weakref.WeakSet()  # weak: an unclosed recorder is still collected
_ORIGINAL: list = []  # GradScaler.step as torch defines it, while the class is wrapped


def _class_step(scaler, optimizer, *args, **kwargs):
    """`torch.amp.GradScaler.step` while a watch is registered: watched for a registered optimizer."""
    inner = _ORIGINAL[0]  # kept while _class_step may still be called (see remove)
    watch = next((w for w in list(_AUTO) if _unwraps_to(optimizer, w.optimizer)), None)
    if watch is None:
        return inner(scaler, optimizer, *args, **kwargs)
    watch.scaler = scaler
    return watch.watch(scaler, lambda: inner(scaler, optimizer, *args, **kwargs))


class AutoScalerWatch(ScalerWatch):
    """`ScalerWatch` without a scaler: finds it when `GradScaler.step` is called with `optimizer`.

    Until then (a run without AMP) `scaler` is None and `columns()` is empty, so the amp columns
    stay null. `remove()` unregisters it, and the last one gives GradScaler its `step` back.
    """

    def __init__(self, optimizer, count: Callable[[], int], on_skip: Callable[[], None]):
        self.scaler, self.optimizer = None, optimizer
        self._count, self._on_skip = count, on_skip
        self.scale, self.skipping = None, False
        with _LOCK:
            current = torch.amp.GradScaler.__dict__.get("step")
            if current is not _class_step and (not _ORIGINAL or current is _ORIGINAL[0]):
                _ORIGINAL[:] = [current]  # (again, if someone put torch's own step back)
                torch.amp.GradScaler.step = _class_step
            _AUTO.add(self)

    def columns(self) -> dict:
        """`amp_skipped` and `loss_scale` once a scaler was seen; {} before."""
        return super().columns() if self.scaler is not None else {}

    def remove(self) -> None:
        """Unregister (safe to call twice); the last watch restores `GradScaler.step`, unless
        something wrapped it after us (then ours stays in its chain, passing every call through)."""
        with _LOCK:
            _AUTO.discard(self)
            if not _AUTO and _ORIGINAL and torch.amp.GradScaler.__dict__.get("step") is _class_step:
                torch.amp.GradScaler.step = _ORIGINAL[0]
                _ORIGINAL.clear()


__all__ = ["AutoScalerWatch", "ScalerWatch"]
