"""Which ring slots become snapshot files: the pre-spike window, onset, during, the tail after a
spike, sparse baselines; and the spike and byte budgets that bound them."""

from __future__ import annotations

import math

from forensics.record.optim import snapshot_hparams
from forensics.rundir.format import FORMAT_VERSION


class SnapshotPolicy:
    """Turns detector events and captured ring slots into snapshot jobs on the sink.

    `warn(key, message)` is the recorder's warn-once. `enabled` turns False for good when a budget
    is exhausted or a write/capture error ends capture; scalars and events go on regardless.
    """

    def __init__(self, ring, sink, warn, *, ring_size: int, tail: int, baseline_every: int, max_spikes: int,
                 max_bytes: int, run_id: str, optimizer, opt_class: str, group_names: list):
        self.ring, self.sink, self.warn = ring, sink, warn
        self.ring_size, self.tail, self.baseline_every = ring_size, tail, baseline_every
        self.max_spikes, self.max_bytes = max_spikes, max_bytes
        self.run_id, self.optimizer, self.opt_class, self.group_names = run_id, optimizer, opt_class, group_names
        self.enabled = ring is not None
        self.active_spike = None  # spike id whose steps are being written ("during")
        self.tail_left, self.tail_spike = 0, None
        self.last_saved = -1
        self.spikes_captured = 0
        self.bytes = 0
        self.closed_spikes: list[dict] = []

    def must_capture(self, t: int, events: list[dict]) -> bool:
        """Whether step t needs a ring slot whatever the stride (a spike or a baseline needs it)."""
        return (self.active_spike is not None or self.tail_left > 0
                or any(e["type"] in ("spike_open", "spike") for e in events)
                or bool(self.baseline_every and t % self.baseline_every == 0))

    def on_step(self, t: int, events: list[dict], slot: int | None) -> None:
        """Handle step t's detector events, then save slot t if a spike, its tail or a baseline wants it."""
        for ev in events:
            self._on_event(t, ev, slot)
        if slot is None or not self.enabled or self.last_saved >= t:
            return
        if self.active_spike is not None:
            self.save(slot, "during", self.active_spike)
        elif self.tail_left > 0:
            self.save(slot, "post", self.tail_spike)
            self.tail_left -= 1
        elif self.baseline_every and t % self.baseline_every == 0:
            self.save(slot, "baseline", None)

    def disable(self) -> None:
        self.enabled = False

    def spikes(self, open_spike: dict | None) -> list:
        """Spikes seen so far as `Spike`s: the closed ones, plus `open_spike` (the detector's) with end=None."""
        from forensics.rundir.reader import Spike

        out = [Spike.from_event(e) for e in self.closed_spikes]
        if open_spike is not None:
            sp, base = open_spike, open_spike["baseline"]
            out.append(Spike.from_event({**sp, "end": None, "magnitude": (
                sp["peak_loss"] / base if base and math.isfinite(base) else math.nan)}))
        return out

    def _on_event(self, t: int, ev: dict, slot: int | None) -> None:
        if ev["type"] == "spike_open":
            self.active_spike = None
            self.tail_left = 0
            if not self.enabled:
                return
            if self.spikes_captured >= self.max_spikes:
                # only spike capture ends: sparse baselines go on (max_bytes still bounds them)
                self.warn("budget", f"spike budget exhausted (max_spikes={self.max_spikes}): no more spike "
                          "snapshots; baselines, per-step scalars and spike events continue")
                return
            self.spikes_captured += 1
            sid = ev["spike_id"]
            pre = [k for k in self.ring.slots_newest_first()
                   if k != slot and t - self.ring_size < self.ring.info[k].step < t
                   and self.ring.info[k].step > self.last_saved]
            for k in sorted(pre, key=lambda k: self.ring.info[k].step):
                self.save(k, "pre", sid)
            if slot is not None:
                self.save(slot, "onset", sid)
            self.active_spike = sid
        elif ev["type"] == "spike":
            self.closed_spikes.append(ev)
            if self.active_spike == ev["spike_id"]:
                self.active_spike = None
                self.tail_left, self.tail_spike = self.tail, ev["spike_id"]

    def save(self, slot: int, role: str, spike_id) -> None:
        """Export ring slot `slot` and queue it as a snapshot file, within the byte budget."""
        if not self.enabled:
            return
        info = self.ring.info[slot]
        batch_bytes = sum(t.numel() * t.element_size() for t in self.ring.batches[slot].values())
        est = self.ring.nbytes_per_slot + batch_bytes + 4096
        if self.bytes + est > self.max_bytes:
            self.enabled = False
            self.warn("budget", f"byte budget exhausted (max_bytes={self.max_bytes}, used ~{self.bytes}): "
                      "no more snapshots; per-step scalars and spike events continue")
            return
        self.bytes += est
        self.last_saved = max(self.last_saved, info.step)
        self.sink.snapshot(info.step, role, spike_id, self.ring.export(slot), self._meta(info, role, spike_id))

    def _meta(self, info, role: str, spike_id) -> dict:
        m = info.meta
        groups = [{**g, "params": names} for g, names in zip(m["groups"], self.group_names)]
        return {"format_version": FORMAT_VERSION, "run_id": self.run_id, "step": info.step,
                "loss": float(m["loss"]), "role": role, "spike_id": spike_id, "optimizer": self.opt_class,
                "optimizer_step": m["optimizer_step"], **snapshot_hparams(self.optimizer, m["groups"]),
                "param_groups": groups,
                "grad_clipped": "unknown" if m["grad_clipped"] is None else bool(m["grad_clipped"]),
                "batch_keys": info.batch_keys}


__all__ = ["SnapshotPolicy"]
