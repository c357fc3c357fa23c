"""Device scalars fetched in batches: what keeps the recorder's hot path free of host-device syncs.

A step's loss, probe loss, norms, Adam ratio statistics and optimizer step count are 0-d tensors on the
training device when the step is captured. `Deferred.put(target, key, value)` records where each one
must land (a step row, a ring slot's metadata, a list of micro-batch losses) and `Deferred.fetch()`
brings all of them to the host at once — per device one `torch.stack`, one `non_blocking` copy into
pinned memory on CUDA and one `.tolist()` — then writes the Python numbers into their targets. The
recorder calls `fetch` every `sync_every` steps (docs/format.md, "Sync-free recording").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _host_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class Deferred:
    """Where pending device scalars go once fetched. `put` is sync-free; `fetch` syncs once per device."""

    def __init__(self):
        self._values: list[torch.Tensor] = []
        self._targets: list[tuple] = []
        self._pinned: dict = {}
        self._works: list = []  # asynchronous collectives to wait for before reading their buffers

    def __len__(self) -> int:
        return len(self._values)

    def put(self, target, key, value, fn: Callable[[float], object] = float) -> None:
        """`target[key] = fn(value)`: now for a Python number or None, at `fetch` for a tensor (a private
        float64 copy is taken now, so later in-place changes of `value`, e.g. Adam's step, do not leak)."""
        if not isinstance(value, torch.Tensor):
            target[key] = None if value is None else fn(value)
            return
        v = value.detach().reshape(())
        self._values.append(v.to(_host_dtype(v.device), copy=True))
        self._targets.append((target, key, fn))
        target[key] = None  # placeholder until fetched

    def put_reduced(self, target, key, buf: torch.Tensor, work, scale: float, fn=float) -> None:
        """Like `put`, for the buffer of an asynchronous all_reduce `work` (read after `work.wait()`,
        times `scale`)."""
        self._works.append(work)
        self._values.append((buf, scale))
        self._targets.append((target, key, fn))
        target[key] = None

    def fetch(self) -> None:
        """Bring every pending value to the host and write it into its target (one sync per device)."""
        if not self._values:
            return
        for work in self._works:
            work.wait()
        self._works = []
        values = [v[0].reshape(()) * v[1] if isinstance(v, tuple) else v for v in self._values]
        targets = self._targets
        self._values, self._targets = [], []
        by_device: dict = {}
        for i, v in enumerate(values):
            by_device.setdefault(v.device, []).append(i)
        host = [math.nan] * len(values)
        for device, idx in by_device.items():
            stacked = torch.stack([values[i] for i in idx])
            if device.type == "cuda":
                buf = self._pinned.get((device, len(idx)))
                if buf is None:
                    buf = self._pinned[(device, len(idx))] = torch.empty(
                        len(idx), dtype=stacked.dtype, pin_memory=True)
                buf.copy_(stacked, non_blocking=True)
                torch.cuda.current_stream(device).synchronize()
                stacked = buf
            elif device.type != "cpu":
                stacked = stacked.to("cpu")
            for i, x in zip(idx, stacked.tolist(), strict=True):
                host[i] = x
        for (target, key, fn), x in zip(targets, host, strict=True):
            target[key] = fn(x)


def nan_to_none(x: float):
    """A fetched statistic that is NaN when undefined (e.g. Adam ratio with no valid coordinate) -> None."""
    return None if math.isnan(x) else x


def sqrt(x: float) -> float:
    """The norm from a fetched squared norm (NaN/Inf kept)."""
    return math.nan if x < 0 else math.sqrt(x)  # a NaN passes through as it is (its sign bit too)


class LazyInputs:
    """What `observe()` reported before the coming `optimizer.step()`, losses kept as device tensors.

    One micro-batch per call: the step's loss is the mean of its micro-batches' losses (for a
    mean-reduced loss over equal micro-batches, the loss of their concatenation), the batch their
    concatenation along dim 0 (`forensics.record.micro.MicroBatches`). `take()` returns the loss as a
    0-d tensor (or float) and `micro_batch_losses` as a list of tensors, fetched later.
    """

    def __init__(self):
        from forensics.record.micro import MicroBatches

        self._micro = MicroBatches()
        self._clipped = None
        self._given: list | None = None

    def __bool__(self) -> bool:
        return bool(self._micro.losses)

    def add(self, loss, flat: dict, clipped, micro_losses=None) -> None:
        """One observe(): a micro-batch (or, with `micro_losses`, a whole step an adapter accumulated)."""
        self._micro.losses.append(loss.detach() if isinstance(loss, torch.Tensor) else float(loss))
        self._micro.batches.append(flat)
        self._clipped = clipped if clipped is not None else self._clipped
        if micro_losses is not None:
            self._given = list(micro_losses)

    def take(self):
        """(loss, batch, grad_clipped, micro meta) of the step, then start over; None if nothing came."""
        if not self:
            return None
        losses, given, clipped = list(self._micro.losses), self._given, self._clipped
        batches = self._micro.batches
        self._micro.losses, self._micro.batches = [], []
        batch = self._micro._concat(batches) if batches else {}
        self._clipped, self._given = None, None
        parts = given if given is not None and len(losses) == 1 else losses
        micro = {"micro_batches": len(parts), "micro_batch_losses": list(parts)} if len(parts) > 1 else {}
        return mean_loss(losses), batch, clipped, micro


def mean_loss(losses: list):
    """The mean of micro-batch losses (tensors or floats) without a sync: float64 on the device."""
    if len(losses) == 1:
        return losses[0]
    if all(not isinstance(v, torch.Tensor) for v in losses):
        return math.fsum(losses) / len(losses)
    ts = [v.detach().reshape(()).double() if isinstance(v, torch.Tensor)
          else torch.tensor(float(v), dtype=torch.float64) for v in losses]
    device = next((t.device for t in ts if t.device.type != "cpu"), None)
    if device is not None:
        ts = [t.to(device) for t in ts]
    return torch.stack(ts).mean()


def optimizer_step_value(optimizer, first_param, fallback: int, adam: bool = False):
    """The optimizer's own update count before this update, without a sync: Adam's `state["step"]` as a
    tensor (copied by `Deferred.put`), 0 for an Adam without one (fresh or cleared), else `fallback`."""
    st = optimizer.state.get(first_param) if first_param is not None else None
    if st and "step" in st:
        return st["step"]
    return 0 if adam else fallback


__all__ = ["Deferred", "LazyInputs", "mean_loss", "nan_to_none", "optimizer_step_value", "sqrt"]
