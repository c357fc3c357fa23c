"""The per-step work of the Recorder: its optimizer hooks, the capture of step t, and committing a step once
its loss is known (detection, row, snapshots). A mixin of `forensics.record.recorder.Recorder`, whose
constructor sets every attribute used here."""

from __future__ import annotations

import math
import time

import torch

from forensics.record.capture import capture_context
from forensics.record.lazy import nan_to_none, optimizer_step_value
from forensics.record.micro import batch_rows
from forensics.record.optim import discover_state_kinds, group_hparams, hparam_columns, state_tensors
from forensics.record.order import CapturedStep
from forensics.record.resume import STATE_FILE, write_state


class HParams:
    """Every param group's hyperparameters in force and their steps/ columns, rebuilt only when a value
    changed (a tensor-valued hyperparameter is read every step, with one `.item()` each)."""

    def __init__(self):
        self._key = None
        self._value = None

    def current(self, optimizer) -> tuple[list[dict], dict]:
        """(`group_hparams(optimizer)`, `hparam_columns` of it), cached while no value changes."""
        key = [[(k, v) for k, v in g.items() if k != "params"] for g in optimizer.param_groups]
        if any(isinstance(v, torch.Tensor) for g in key for _, v in g) or key != self._key:
            groups = group_hparams(optimizer)
            self._key, self._value = key, (groups, hparam_columns(groups))
        return self._value


class StepLoop:
    """Hooks and per-step bookkeeping of the Recorder (see `Recorder` for the attributes)."""

    # ----------------------------------------------------------------- hooks and steps

    def _pre_hook(self, optimizer, args, kwargs) -> None:
        try:
            self._on_pre_step()
        except Exception as e:  # noqa: BLE001
            self._fail("pre-step hook", e)
        finally:
            self._step += 1

    def _skipped(self) -> None:
        """The scaler skipped `optimizer.step()` (inf/NaN gradients): record the loop's step anyway."""
        self._pre_hook(self.optimizer, (), {})

    def _post_hook(self, optimizer, args, kwargs) -> None:
        self._updates += 1  # the update norm of step t is taken at step t+1 from two ring slots

    def _on_pre_step(self) -> None:
        """Capture step t into the ring (whatever the stride: whether it opens a spike is known only once its
        loss is fetched) and compute its row's scalars on the device. With its loss already reported the step
        is queued here; otherwise it waits for observe(). No host-device sync (docs/format.md)."""
        t = self._step
        self._surface()
        if self._open is not None:
            self._commit_missing()
        pending = self._pending.take()
        if self._sink.stopped:
            return
        loss, batch, clipped, micro = pending if pending is not None else (None, {}, None, {})
        probe = self.objective.tensor(t)
        if self.objective.failure is not None:
            self._warn("probe", self.objective.failure + "; the detector watches the training loss")
        groups, columns = self._hparams.current(self.optimizer)
        opt_step = optimizer_step_value(self.optimizer, self._params[0] if self._params else None,
                                        self._updates, self._adam)
        amp = self._amp.columns() if self._amp is not None else {}
        meta = {"loss": math.nan, "groups": groups, "grad_clipped": clipped, **micro, **amp}
        slot = self._capture(t, pending is not None, batch, meta, opt_step)
        dense = slot if self.mode == "dense" else None  # keyframe slots hold no state: live norms
        prev, self._row_slot = self._row_slot, dense
        several = self._ranks.distributed
        row = self._scalars.row(t, time.perf_counter() - self._t0, None if several else probe, groups,
                                opt_step, dense, columns)
        if several and self.objective.kind != "none" and t % self.objective.every == 0:
            self._global.put(row, "probe_loss", probe, nan_to_none)  # the mean over ranks: same everywhere
        row.update(amp)
        row["_reported"] = pending is not None
        row["_probe_set"] = self.objective.set_id  # the probe's set at this step travels with its value
        if prev is not None and dense is not None and prev != dense:
            self._scalars.put_norm(row, "_prev_update", self._scalars.update_sq(prev, dense))
        if pending is not None:
            self._global.put(row, "loss", loss)
            row.update(batch_rows=batch_rows(batch, self.batch_keys["input"]),
                       micro_batches=micro.get("micro_batches", 1))
            row.update(self._logit_row)
            self._logit_row = {}
        step = CapturedStep(t, slot, None, row, None, self._backward.count)
        if pending is None:
            self._open, self._sink.open_row = step, row
        else:
            self._note(self.objective.offer(t, batch))
            self._queue_step(step)

    def _capture(self, t: int, reported: bool, batch: dict, meta: dict, opt_step) -> int | None:
        """Step t's params, grads, optimizer state and batch into the ring (and the context ring); its
        ring slot, or None when capture is off or failed (then capture is off, scalars go on)."""
        if not self._snaps.enabled:
            return None
        d = self._deferred
        if not self._known_optimizer:
            for kind in discover_state_kinds(self.optimizer, self._params):
                self.ring.add_kind(kind)
        d.put(meta, "optimizer_step", opt_step, int)  # meta["loss"]: set at commit, from the row
        if reported:
            for i, v in enumerate(meta.get("micro_batch_losses") or []):
                d.put(meta["micro_batch_losses"], i, v)
        slot = None
        try:
            states = state_tensors(self.optimizer, self._params, self.ring.banks)
            slot = self.ring.capture(t, [p.grad for p in self._params], states, batch, meta,
                                     optional=reported and t % self.stride != 0)
            capture_context(self.context, self.ring, t, self.config.context_every, self._params,
                            self.optimizer, batch, meta)
        except Exception as e:  # noqa: BLE001 - capture off, scalars go on
            self._fail("ring capture", e)
        return slot

    def _complete(self, step: CapturedStep, loss, batch: dict, clipped) -> None:
        """observe() after step(): step `step.t` gets its loss and batch (into its ring slots), then
        queued."""
        for ring in (self.ring, self.context):
            slot = ring.find(step.t) if ring is not None else None
            if slot is not None:
                ring.attach(slot, batch, grad_clipped=clipped)
        step.row.update(_reported=True, batch_rows=batch_rows(batch, self.batch_keys["input"]),
                        micro_batches=1, **self._logit_row)
        self._logit_row = {}
        self._global.put(step.row, "loss", loss)
        self._note(self.objective.offer(step.t, batch))
        self._queue_step(step)

    def _queue_step(self, step: CapturedStep) -> None:
        self._queue.append(step)
        if len(self._queue) >= self.sync_every:
            self._drain()

    def _drain(self) -> None:
        """Fetch the queued steps' device scalars (one sync), then commit them in order: detection,
        rows, snapshots. Detection lags by at most `sync_every` steps; the ring holds that many more slots."""
        if not self._queue:
            return
        self._deferred.fetch()
        queue = list(self._queue)
        self._queue.clear()  # in place: the sink holds this list for an unclosed recorder
        for step in queue:
            self._commit(step)

    def _commit(self, step: CapturedStep) -> None:
        """Step `step.t` has its loss (or never got one) and its scalars are fetched: detection, row,
        snapshots."""
        row = step.row
        loss = row["loss"] if row.pop("_reported", False) else None
        prev_update = row.pop("_prev_update", None)
        if prev_update is not None:
            self._sink.patch_last(step.t - 1, "update_norm", prev_update)
        events = self.detector.update(step.t, loss, probe=row["probe_loss"], rows=row["batch_rows"],
                                      probe_set=row.pop("_probe_set", None))
        row["loss"] = math.nan if loss is None else loss
        if step.slot is not None and self.ring.info[step.slot].step == step.t:
            self.ring.info[step.slot].meta["loss"] = row["loss"]  # shared with its context-ring slot
        row["spike_id"] = self.detector.current_spike_id
        self._sink.add_row(row)
        self._last_committed = step.t
        if (step.t + 1) % self.config.steps_chunk == 0:
            self._save_state()
        for ev in events:
            self._sink.event(ev)
            self._spike_events.append(ev)
        self._snaps.on_step(step.t, events, step.slot, self.detector.current_spike_id)

    def _commit_missing(self) -> None:
        step, self._open = self._open, None
        self._warn("no-observe", "an optimizer step ran without rec.observe(loss, batch) before or after it; "
                   "that step's loss is recorded as missing")
        self._queue_step(step)

    def _note(self, event: dict | None) -> None:
        if event is not None:
            self._sink.event(event)

    def _save_state(self) -> None:
        """Queue detector.json: what a resumed recorder restores (detector and snapshot budgets)."""
        state = {"step": self._last_committed, "detector": self.detector.state_dict(),
                 "snapshots": self._snaps.state_dict()}
        self._sink.submit_file(STATE_FILE, lambda: write_state(self.run_dir, state))


__all__ = ["StepLoop"]
