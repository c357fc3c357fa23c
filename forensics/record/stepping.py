"""The per-step work of the Recorder: its optimizer hooks, the capture of step t, and committing a step once
its loss is known (detection, row, snapshots). A mixin of `forensics.record.recorder.Recorder`, whose
constructor sets every attribute used here."""

from __future__ import annotations

import math
import time

from forensics.record.capture import capture_context
from forensics.record.micro import batch_rows
from forensics.record.optim import discover_state_kinds, group_hparams, optimizer_step, state_tensors
from forensics.record.order import CapturedStep
from forensics.record.resume import STATE_FILE, write_state


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
        """Capture step t. With its loss already reported, finish it here; otherwise it waits for observe()
        (captured whatever the stride: whether it opens a spike is not known before its loss)."""
        t = self._step
        self._surface()
        if self._open is not None:
            self._commit_missing()
        pending = self._pending.take()
        if self._sink.stopped:
            return
        loss, batch, clipped, micro = pending if pending is not None else (None, {}, None, {})
        probe = self.objective.value(t)
        if self.objective.failure is not None:
            self._warn("probe", self.objective.failure + "; the detector watches the training loss")
        groups = group_hparams(self.optimizer)
        opt_step = optimizer_step(self.optimizer, self._params[0] if self._params else None, self._updates,
                                  self._adam)
        rows = batch_rows(batch, self.batch_keys["input"]) if pending is not None else None
        events = (self.detector.update(t, loss, probe=probe, rows=rows, probe_set=self.objective.set_id)
                  if pending is not None else None)
        slot, amp = None, (self._amp.columns() if self._amp is not None else {})
        active = self.detector.current_spike_id
        if self._snaps.enabled and (events is None or t % self.stride == 0
                                    or self._snaps.must_capture(t, events, active)):
            if not self._known_optimizer:
                for kind in discover_state_kinds(self.optimizer, self._params):
                    self.ring.add_kind(kind)
            meta = {"loss": math.nan if loss is None else loss, "optimizer_step": opt_step, "groups": groups,
                    "grad_clipped": clipped, **micro, **amp}
            try:
                states = state_tensors(self.optimizer, self._params, self.ring.banks)
                slot = self.ring.capture(t, [p.grad for p in self._params], states, batch, meta)
                capture_context(self.context, self.ring, t, self.config.context_every, self._params,
                                self.optimizer, batch, meta)
            except Exception as e:  # noqa: BLE001 - capture off, scalars go on
                self._fail("ring capture", e)
        prev, self._row_slot = self._row_slot, slot
        if prev is not None and slot is not None and prev != slot:
            self._sink.patch_last(t - 1, "update_norm", self._scalars.update_norm(prev, slot))
        row = self._scalars.row(t, time.perf_counter() - self._t0, probe, groups, opt_step, slot)
        row.update(amp)
        if pending is not None:
            row.update(batch_rows=rows, micro_batches=micro.get("micro_batches", 1))
        step = CapturedStep(t, slot, probe, row, events, self._backward.count)
        if pending is None:
            self._open, self._sink.open_row = step, row
        else:
            self._commit(step, loss)
            self._note(self.objective.offer(t, batch))

    def _commit(self, step: CapturedStep, loss: float | None, batch: dict | None = None,
                clipped=None) -> None:
        """Step `step.t` has its loss (None: never reported): detection, its row, its snapshots."""
        events = step.events
        if events is None:
            rows = batch_rows(batch, self.batch_keys["input"]) if batch is not None else None
            events = self.detector.update(step.t, loss, probe=step.probe, rows=rows,
                                          probe_set=self.objective.set_id)
            for ring in (self.ring, self.context):
                slot = ring.find(step.t) if ring is not None and batch is not None else None
                if slot is not None:
                    ring.attach(slot, batch, loss=loss, grad_clipped=clipped)
            if batch is not None:
                step.row.update(batch_rows=rows, micro_batches=1)
        if batch is not None:
            self._note(self.objective.offer(step.t, batch))
        step.row["loss"] = math.nan if loss is None else loss
        step.row["spike_id"] = self.detector.current_spike_id
        step.row.update(self._logit_row)
        self._logit_row = {}
        self._sink.add_row(step.row)
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
        self._commit(step, None)

    def _note(self, event: dict | None) -> None:
        if event is not None:
            self._sink.event(event)

    def _save_state(self) -> None:
        """Queue detector.json: what a resumed recorder restores (detector and snapshot budgets)."""
        state = {"step": self._last_committed, "detector": self.detector.state_dict(),
                 "snapshots": self._snaps.state_dict()}
        self._sink.submit_file(STATE_FILE, lambda: write_state(self.run_dir, state))


__all__ = ["StepLoop"]
