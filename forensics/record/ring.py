"""Ring buffer of the last K training states in flat storage allocated once on the training device.

One flat buffer per (kind, dtype) of shape (K, numel), where a kind is `param`, `grad` or an
optimizer state name (`exp_avg`, ...); each slot holds per-parameter views filled every step
with one `torch._foreach_copy_`. Batch tensors are preallocated per slot and key, reallocated
only when a shape changes. Steady state allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Layout:
    """Where each parameter lives inside the flat buffer of its dtype."""

    names: list[str]
    shapes: list[tuple]
    dtypes: list[torch.dtype]
    offsets: list[int]  # offset within the flat buffer of the entry's dtype
    totals: dict = field(default_factory=dict)  # dtype -> numel

    @classmethod
    def of(cls, names, tensors) -> "Layout":
        """The layout packing `tensors`, in order, into one flat buffer per dtype (running offsets)."""
        lay = cls(list(names), [tuple(t.shape) for t in tensors], [t.dtype for t in tensors], [])
        for t in tensors:
            off = lay.totals.get(t.dtype, 0)
            lay.offsets.append(off)
            lay.totals[t.dtype] = off + t.numel()
        return lay

    def views(self, flats: dict) -> dict:
        """`{name: tensor}` views into `flats` (dtype -> 1-D tensor) following this layout."""
        out = {}
        for name, shape, dtype, off in zip(self.names, self.shapes, self.dtypes, self.offsets, strict=True):
            n = 1
            for s in shape:
                n *= s
            out[name] = flats[dtype][off:off + n].view(shape)
        return out


class FlatBank:
    """K slots of one kind of per-parameter tensor, in one flat (K, numel) buffer per dtype."""

    def __init__(self, layout: Layout, ring_size: int, device, pin: bool = False):
        self.layout, self.pin = layout, pin
        self.bufs = {dt: torch.zeros(ring_size, n, dtype=dt, device=device).pin_memory() if pin
                     else torch.zeros(ring_size, n, dtype=dt, device=device)
                     for dt, n in layout.totals.items()}
        self.slot_views = [list(layout.views({dt: b[k] for dt, b in self.bufs.items()}).values())
                           for k in range(ring_size)]
        self.nbytes_per_slot = sum(n * torch.empty((), dtype=dt).element_size()
                                   for dt, n in layout.totals.items())

    def fill(self, slot: int, sources: list) -> None:
        """Copy `sources` (aligned with the layout; None -> zeros) into `slot`."""
        views = self.slot_views[slot]
        dst, src = [], []
        for v, s in zip(views, sources, strict=True):
            if s is None:
                v.zero_()
            else:
                dst.append(v)
                src.append(local(s.detach()))
        if dst:  # pinned host banks: an asynchronous device-to-host copy, ordered before the update
            torch._foreach_copy_(dst, src, non_blocking=self.pin)

    def flats(self, slot: int) -> dict:
        """Slot `slot`'s flat buffers (dtype -> 1-D tensor), as views, not copies."""
        return {dt: b[slot] for dt, b in self.bufs.items()}

    def clone_to_cpu(self, slot: int) -> dict:
        """A private CPU copy of one slot (dtype -> 1-D tensor) to hand to the writer thread."""
        return {dt: b[slot].to("cpu", copy=True) for dt, b in self.bufs.items()}


@dataclass
class SlotInfo:
    """What a ring slot holds besides tensors."""

    step: int = -1
    meta: dict = field(default_factory=dict)
    batch_keys: list = field(default_factory=list)
    optional: bool = False  # captured only to cover the detection lag (off the stride): no `pre` snapshot


class SlotIndex:
    """Slots of a circular buffer: `size` slots, `head` the newest (−1: none yet), `info[k]` a
    `SlotInfo` (step −1: empty), `batches[k]` the slot's batch tensors."""

    size: int
    head: int
    info: list
    batches: list

    def attach(self, slot: int, batch: dict, **meta) -> None:
        """Fill in the batch and metadata of a slot captured before its loss was known."""
        fill_batch(self.batches[slot], batch)
        self.info[slot].batch_keys = list(batch)
        self.info[slot].meta.update(meta)

    def slots_newest_first(self):
        """Slot indices holding a capture, newest first."""
        for i in range(self.size):
            k = (self.head - i) % self.size
            if self.info[k].step >= 0 and self.head >= 0:
                yield k

    def find(self, step: int) -> int | None:
        """The slot holding the capture of `step`; None if it was overwritten or never captured."""
        return next((k for k in self.slots_newest_first() if self.info[k].step == step), None)


class Ring(SlotIndex):
    """The last K captured states: params, grads, optimizer state kinds and batches."""

    def __init__(self, names: list[str], params: list[torch.Tensor], state_kinds: list[str], *,
                 ring_size: int, device=None, pin: bool = False):
        """`device`: where the banks live (default: the first parameter's); `pin`: page-locked host banks
        filled asynchronously (keyframes of a CUDA model)."""
        if ring_size < 1:
            raise ValueError(f"ring_size must be >= 1, got {ring_size}")
        self.size = ring_size
        self.names = names
        self.params = params
        self.device = torch.device(device) if device is not None else (
            params[0].device if params else torch.device("cpu"))
        self.pin = pin
        self.layout = Layout.of(names, [local(p) for p in params])  # FSDP2: this rank's shards
        self.banks: dict[str, FlatBank] = {}
        for kind in ["param", "grad", *state_kinds]:
            self.add_kind(kind)
        self.batches: list[dict] = [{} for _ in range(ring_size)]
        self.info = [SlotInfo() for _ in range(ring_size)]
        self.head = -1  # slot of the most recent capture

    def add_kind(self, kind: str, layout: Layout | None = None) -> None:
        """Allocate a bank for a new kind (one-time; used for state discovered after the first step)."""
        if kind not in self.banks:
            self.banks[kind] = FlatBank(layout or self.layout, self.size, self.device, self.pin)

    @property
    def nbytes_per_slot(self) -> int:
        """Bytes one slot holds across all kinds (params, grads, optimizer state); batches not counted."""
        return sum(b.nbytes_per_slot for b in self.banks.values())

    def capture(self, step: int, grads: list, states: dict, batch: dict, meta: dict, *,
                optional: bool = False) -> int:
        """Copy the current state into the next slot; returns the slot index. `optional`: kept only while
        its step's loss is unknown (a stride step it is not): never written as a `pre` snapshot."""
        k = (self.head + 1) % self.size
        self.banks["param"].fill(k, self.params)
        self.banks["grad"].fill(k, grads)
        for kind, bank in self.banks.items():
            if kind not in ("param", "grad"):
                bank.fill(k, states.get(kind, [None] * len(self.params)))
        fill_batch(self.batches[k], batch)
        self.info[k] = SlotInfo(step=step, meta=meta, batch_keys=list(batch), optional=optional)
        self.head = k
        return k

    def export(self, slot: int) -> dict:
        """A CPU copy of a slot for the writer: `{kind: (layout, {dtype: flat})}` plus batch."""
        out = {kind: (bank.layout, bank.clone_to_cpu(slot)) for kind, bank in self.banks.items()}
        batch = {key: t.to("cpu", copy=True) for key, t in self.batches[slot].items()}
        return {"banks": out, "batch": batch}


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2), else `t` itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def fill_batch(slot: dict, batch: dict) -> None:
    """Copy `batch` into the preallocated tensors of `slot` (reallocated only when a shape changes)."""
    for key, t in batch.items():
        buf = slot.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.device != t.device:
            buf = slot[key] = torch.empty_like(t, memory_format=torch.contiguous_format)
        buf.copy_(t.detach())
    for key in [k_ for k_ in slot if k_ not in batch]:
        del slot[key]


def tensors_from_export(export: dict) -> dict:
    """Turn an `export()` into safetensors' `{name: tensor}` with the format's prefixes."""
    tensors = {}
    for kind, (layout, flats) in export["banks"].items():
        prefix = kind if kind in ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq",
                                  "momentum_buffer") else f"state/{kind}"
        for name, view in layout.views(flats).items():
            tensors[f"{prefix}/{name}"] = view
    for key, t in export["batch"].items():
        tensors[f"batch/{key}"] = t
    return tensors
