"""Micro-batches: the losses and batches reported before one optimizer step (gradient accumulation),
and the row count of a batch."""

from __future__ import annotations

import math

import torch

from forensics.record.inputs import flatten_batch
from forensics.record.warn import WarnOnce


def batch_rows(flat: dict, input_key: str | None = None) -> int | None:
    """Rows (first dimension) of a flattened batch: of its `input_key` entry when it has one, else of
    its first tensor with a dimension; None when there is none. Shapes only: no device sync."""
    x = flat.get(input_key) if input_key is not None else None
    if not (isinstance(x, torch.Tensor) and x.dim()):
        x = next((v for v in flat.values() if isinstance(v, torch.Tensor) and v.dim()), None)
    return int(x.shape[0]) if x is not None else None


class MicroBatches:
    """Losses and batches of the micro-batches that make up one optimizer step (gradient accumulation).

    `add(loss, batch)` per micro-batch; `take(reduce)` returns the step's loss and the micro-batches
    concatenated along dim 0, then starts over. The concatenation is the batch whose gradient the
    optimizer sees (mean-reduced losses, equal micro-batch sizes); when shapes do not line up the
    last micro-batch is recorded instead, with one warning.
    """

    def __init__(self):
        self.losses: list[float] = []
        self.batches: list[dict] = []
        self._warn = WarnOnce()

    def add_loss(self, loss) -> None:
        """Keep a micro-batch's loss (tensor or number; read with one `.item()`)."""
        value = loss.detach().float().item() if isinstance(loss, torch.Tensor) else loss
        self.losses.append(float(value))

    def add_batch(self, batch) -> None:
        """Keep a micro-batch: any nesting of dicts, lists and tuples of tensors, arrays and numbers
        (flattened as `Recorder.observe` does); entries that cannot be stored are named in one warning."""
        flat, dropped = flatten_batch(batch)
        if dropped:
            self._warn(f"dropped:{dropped}", "batch entries that are not tensors, arrays or numbers are not "
                       f"recorded: {', '.join(dropped)}", stacklevel=4)
        self.batches.append({k: v.detach() for k, v in flat.items()})

    def clear(self) -> None:
        """Forget the micro-batches kept so far."""
        self.losses, self.batches = [], []

    def take(self, reduce: str = "sum") -> tuple[float | None, dict]:
        """(loss of the step or None if none was seen, batch dict); `reduce` is "sum" or "mean"."""
        losses, batches = self.losses, self.batches
        self.clear()
        if not losses:
            loss = None
        elif reduce == "sum":
            loss = math.fsum(losses)
        else:
            loss = math.fsum(losses) / len(losses)
        return loss, self._concat(batches)

    def _concat(self, batches: list[dict]) -> dict:
        if not batches:
            return {}
        if len(batches) == 1:
            return batches[0]
        keys = [k for k in batches[-1] if all(k in b for b in batches)]
        try:
            return {k: torch.cat([b[k] for b in batches], dim=0) for k in keys}
        except RuntimeError as e:  # micro-batches of different shapes (e.g. padding)
            self._warn("concat", f"micro-batches of one optimizer step do not concatenate ({e}); "
                       "recording the last micro-batch only", stacklevel=4)
            return batches[-1]


__all__ = ["MicroBatches", "batch_rows"]
