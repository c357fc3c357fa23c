"""Which ring slots become snapshot files: sparse context and the dense pre-spike window, onset,
during, the tail after an episode recovers, sparse baselines; and the spike (episode) and byte
budgets that bound them."""

from __future__ import annotations

from forensics.record.optim import snapshot_hparams, state_tensors
from forensics.rundir.format import FORMAT_VERSION


class SnapshotPolicy:
    """Turns detector events and captured ring slots into snapshot jobs on the sink.

    `warn(key, message)` is the recorder's warn-once. `context` is the sparse ring (or None).
    `full(export)` (FSDP2) gathers every rank's shards into full tensors; `slot_bytes` is then the
    bytes of a full state. `gather(batch) -> (global batch, [[rank, rows]])` (several ranks) is
    called for every snapshot on every rank; `writes` is False on the ranks that do not write.
    `enabled` turns False for good when the byte budget is exhausted or a write/capture error
    ends capture; scalars and events go on regardless. Budgets count episodes (`spike_open`), not
    re-triggers: a `spike_reopen` of the episode being captured resumes its `during` snapshots.
    """

    def __init__(self, ring, sink, warn, *, ring_size: int, tail: int, baseline_every: int, max_spikes: int,
                 max_bytes: int, run_id: str, optimizer, opt_class: str, group_names: list, context=None,
                 gather=None, writes: bool = True, full=None, slot_bytes: int | None = None):
        self.ring, self.context, self.sink, self.warn = ring, context, sink, warn
        self.ring_size, self.tail, self.baseline_every = ring_size, tail, baseline_every
        self.max_spikes, self.max_bytes = max_spikes, max_bytes
        self.run_id, self.optimizer = run_id, optimizer
        self.opt_class, self.group_names = opt_class, group_names
        self.enabled = ring is not None
        self.gather, self.writes = gather, writes  # several ranks: gather the batch; only the writer writes
        self.full, self.slot_bytes = full, slot_bytes  # FSDP2: gather the shards; bytes of a full state
        self.capturing = None  # id of the episode whose snapshots are being written
        self.tail_left = 0
        self.last_saved = -1
        self.spikes_captured = 0
        self.bytes = 0

    def must_capture(self, t: int, events: list[dict], active) -> bool:
        """Whether step t needs a ring slot whatever the stride (a spike, its tail or a baseline needs it);
        `active` is the detector's current spike id."""
        return (active is not None or (self.capturing is not None and self.tail_left > 0)
                or any(e["type"] in ("spike_open", "spike_reopen", "spike") for e in events)
                or bool(self.baseline_every and t % self.baseline_every == 0))

    def on_step(self, t: int, events: list[dict], slot: int | None, active=None) -> None:
        """Handle step t's detector events, then save slot t if a spike (`active`, the detector's
        current spike id), its tail or a baseline wants it."""
        for ev in events:
            self._on_event(t, ev, slot)
        if slot is None or not self.enabled or self.last_saved >= t:
            return
        if self.capturing is not None and active == self.capturing:
            self.save(self.ring, slot, "during", self.capturing)
        elif self.capturing is not None and self.tail_left > 0:
            self.save(self.ring, slot, "post", self.capturing)
            self.tail_left -= 1
        elif self.baseline_every and t % self.baseline_every == 0:
            self.save(self.ring, slot, "baseline", None)

    def disable(self) -> None:
        """End snapshot capture for good."""
        self.enabled = False

    def state_dict(self) -> dict:
        """The budgets used and the capture in progress (JSON-able), for a resumed run."""
        return {"capturing": self.capturing, "tail_left": self.tail_left, "last_saved": self.last_saved,
                "spikes_captured": self.spikes_captured, "bytes": self.bytes}

    def load_state_dict(self, d: dict) -> None:
        """Restore `state_dict`'s output."""
        for k in ("capturing", "tail_left", "last_saved", "spikes_captured", "bytes"):
            if k in d:
                setattr(self, k, d[k])

    def _on_event(self, t: int, ev: dict, slot: int | None) -> None:
        if ev["type"] == "spike_reopen":
            if ev["spike_id"] == self.capturing:
                self.tail_left = self.tail
            return
        if ev["type"] != "spike_open":
            return
        self.capturing, self.tail_left = None, 0
        if not self.enabled:
            return
        if self.spikes_captured >= self.max_spikes:
            # only spike capture ends: sparse baselines go on (max_bytes still bounds them)
            self.warn("budget", f"spike budget exhausted (max_spikes={self.max_spikes} episodes): "
                      "no more spike snapshots; baselines, per-step scalars and spike events continue")
            return
        self.spikes_captured += 1
        sid = ev["spike_id"]
        pre = [k for k in self.ring.slots_newest_first()
               if k != slot and t - self.ring_size < self.ring.info[k].step < t
               and self.ring.info[k].step > self.last_saved and not self.ring.info[k].optional]
        first_pre = min([self.ring.info[k].step for k in pre] + [t])
        if self.context is not None:
            ctx = [k for k in self.context.slots_newest_first()
                   if self.last_saved < self.context.info[k].step < min(first_pre, t - self.ring_size + 1)]
            for k in sorted(ctx, key=lambda k: self.context.info[k].step):
                self.save(self.context, k, "context", sid)
        for k in sorted(pre, key=lambda k: self.ring.info[k].step):
            self.save(self.ring, k, "pre", sid)
        if slot is not None:
            self.save(self.ring, slot, "onset", sid)
        self.capturing, self.tail_left = sid, self.tail

    def save(self, ring, slot: int, role: str, spike_id) -> None:
        """Export slot `slot` of `ring` and queue it as a snapshot file, within the byte budget."""
        if not self.enabled:
            return
        info = ring.info[slot]
        batch_bytes = 0 if self.gather else sum(t.numel() * t.element_size()
                                                for t in ring.batches[slot].values())
        est = (self.slot_bytes or ring.nbytes_per_slot) + batch_bytes + 4096  # the same on every rank
        if self.bytes + est > self.max_bytes:
            self.enabled = False
            self.warn("budget", f"byte budget exhausted (max_bytes={self.max_bytes}, used ~{self.bytes}): "
                      "no more snapshots; per-step scalars and spike events continue")
            return
        try:
            export = ring.export(slot)  # keyframe mode: reconstructed by a replay
        except Exception as e:  # noqa: BLE001 - that snapshot is missing, capture goes on
            self.warn(f"export:{type(e).__name__}", f"the snapshot of step {info.step} could not be built "
                      f"({type(e).__name__}: {e}); it is missing, recording continues")
            return
        self.bytes += est
        self.last_saved = max(self.last_saved, info.step)
        meta = self._meta(info, role, spike_id)
        if self.full is not None:
            export = self.full(export)
        if self.gather is not None:  # every rank takes part (same detector, same decisions), rank 0 writes
            export["batch"], shards = self.gather(export["batch"])
            meta["batch_shards"] = shards
        if self.writes:
            self.sink.snapshot(info.step, role, spike_id, export, meta)

    def _meta(self, info, role: str, spike_id) -> dict:
        m = info.meta
        groups = [{**g, "params": names} for g, names in zip(m["groups"], self.group_names, strict=False)]
        return {"format_version": FORMAT_VERSION, "run_id": self.run_id, "step": info.step,
                "loss": float(m["loss"]), "role": role, "spike_id": spike_id, "optimizer": self.opt_class,
                "optimizer_step": m["optimizer_step"], **snapshot_hparams(self.optimizer, m["groups"]),
                "param_groups": groups,
                "grad_clipped": "unknown" if m["grad_clipped"] is None else bool(m["grad_clipped"]),
                "batch_keys": info.batch_keys,
                **{k: m[k] for k in ("micro_batches", "micro_batch_losses", "amp_skipped", "loss_scale",
                                     "reconstructed", "replay_loss_rel_error")
                   if m.get(k) is not None}}


def capture_context(context, ring, t: int, every: int, params: list, optimizer, batch: dict,
                    meta: dict) -> None:
    """Every `every` steps, a full state into the sparse `context` ring too (None: no context)."""
    if context is None or t % every:
        return
    for kind in ring.banks:
        if kind not in context.banks:
            context.add_kind(kind)
    context.capture(t, [p.grad for p in params], state_tensors(optimizer, params, context.banks), batch, meta)


__all__ = ["SnapshotPolicy", "capture_context"]
