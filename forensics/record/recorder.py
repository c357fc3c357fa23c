"""The Recorder: rides in the training loop, keeps the last K states in a ring and writes the black box on a spike.

Example:
    >>> rec = Recorder(model, optimizer, "runs/my-run", loss="mse")   # doctest: +SKIP
    >>> for x, y in loader:                                            # doctest: +SKIP
    ...     optimizer.zero_grad(); loss = F.mse_loss(model(x), y); loss.backward()
    ...     rec.observe(loss, {"x": x, "y": y})   # after backward; before or after optimizer.step()
    ...     optimizer.step()
    >>> rec.close()                                                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from pathlib import Path

import torch

from forensics.record.capture import SnapshotPolicy
from forensics.record.detector import DetectorConfig, SpikeDetector
from forensics.record.guard import prepare_run_dir
from forensics.record.inputs import batch_key_map, check_counts, flatten_batch, loss_spec, unwrap_model
from forensics.record.optim import (
    class_path, discover_state_kinds, group_hparams, is_adam, optimizer_step, state_kinds, state_tensors,
)
from forensics.record.order import BackwardCounter, CapturedStep
from forensics.record.ring import Ring
from forensics.record.scalars import Probe, StepScalars
from forensics.record.sink import MAX_PENDING_ROWS, RunSink
from forensics.record.status import WriteStatus, finish_unclosed
from forensics.record.warn import RecorderWarning, WarnOnce
from forensics.rundir.format import SNAPSHOTS_DIR, STEPS_DIR
from forensics.rundir.manifest import build_manifest, param_names, write_manifest

log = logging.getLogger("forensics.record")


class Recorder:
    """Flight recorder for one training run; see README.md for the three-line usage.

    Hooks `optimizer` with `register_step_pre_hook` (capture state t into the ring: weights before
    update t, gradient, optimizer state) and `register_step_post_hook` (update count). `observe()`
    may come before or after `optimizer.step()` (docs/integrations.md). Files are written on a
    background thread; step rows and events that fail to write are kept (at most `max_pending_rows`
    rows) and retried. Recorder failures are warned about (`RecorderWarning`) and counted in
    `status`, never raised into the training loop unless `strict=True`. Without `close()`, buffered
    rows are flushed when the recorder is garbage-collected or the interpreter exits.
    """

    def __init__(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run_dir, *,
        model_factory: str | None = None, model_kwargs: dict | None = None, loss="mse",
        batch_keys=("x", "y"), detector="robust", ring_size: int = 8, stride: int = 1, tail: int = 16,
        baseline_every: int = 500, max_spikes: int = 20, max_bytes: int = 2 * 1024**3, probe=None,
        probe_every: int = 10, task: dict | None = None, seed: int | None = None, run_id: str | None = None,
        strict: bool = False, steps_chunk: int = 256, overwrite: bool = False,
        max_pending_rows: int = MAX_PENDING_ROWS, hf_config: str | None = None,
    ):
        check_counts(ring_size=(ring_size, 1), stride=(stride, 1), tail=(tail, 0), baseline_every=(baseline_every, 0),
                     max_spikes=(max_spikes, 0), max_bytes=(max_bytes, 0), probe_every=(probe_every, 1),
                     steps_chunk=(steps_chunk, 1), max_pending_rows=(max_pending_rows, 1))
        keys = batch_key_map(batch_keys)
        model = unwrap_model(model)
        self.model, self.optimizer, self.strict = model, optimizer, strict
        self.run_dir, self.loss_spec, self.batch_keys = Path(run_dir), loss_spec(loss), keys
        self.detector = SpikeDetector(DetectorConfig.coerce(detector))
        if self.detector.config.signal != "loss" and probe is None:
            raise ValueError(f"detector watches {self.detector.config.signal!r} but no probe batch was given")
        self.probe = None if probe is None else Probe(model, flatten_batch(probe)[0], keys, self.loss_spec,
                                                      None if isinstance(loss, str) else loss)
        prepare_run_dir(self.run_dir, overwrite)
        self.run_id = run_id or self.run_dir.resolve().name
        self.ring_size, self.stride, self.probe_every = ring_size, stride, probe_every
        named, _ = param_names(model)
        self._params = [p for _, p in named]
        name_of = {id(p): n for n, p in named}
        kinds, self._known_optimizer = state_kinds(optimizer)
        self.manifest = build_manifest(
            model, optimizer, run_id=self.run_id, model_factory=model_factory, model_kwargs=model_kwargs,
            loss=self.loss_spec, batch_keys=keys, detector=self.detector.config.to_dict(),
            recorder={"ring_size": ring_size, "stride": stride, "tail": tail, "baseline_every": baseline_every,
                      "max_spikes": max_spikes, "max_bytes": max_bytes, "probe_every": probe_every,
                      "probe": self.probe is not None, "steps_chunk": steps_chunk},
            task=task, seed=seed, hf_config=hf_config)
        write_manifest(self.run_dir, self.manifest)
        (self.run_dir / STEPS_DIR).mkdir(exist_ok=True)
        (self.run_dir / SNAPSHOTS_DIR).mkdir(exist_ok=True)
        self._sink = RunSink(self.run_dir, steps_chunk=steps_chunk, max_pending_rows=max_pending_rows)
        self._finalizer = weakref.finalize(self, finish_unclosed, self._sink)  # holds the sink, not self
        self._closed = False
        self._step = 0  # index of the next optimizer step
        self._warn = WarnOnce(on_first=self._log_warning)
        self.ring = Ring([n for n, _ in named], self._params, kinds, ring_size=ring_size) if self._params else None
        self._scalars = StepScalars(self.ring, self._params, is_adam(optimizer))
        opt_class = class_path(optimizer)
        self._snaps = SnapshotPolicy(
            self.ring, self._sink, self._warn, ring_size=ring_size, tail=tail, baseline_every=baseline_every,
            max_spikes=max_spikes, max_bytes=max_bytes, run_id=self.run_id, optimizer=optimizer, opt_class=opt_class,
            group_names=[[name_of.get(id(p), f"<unnamed:{i}>") for i, p in enumerate(g["params"])]
                         for g in optimizer.param_groups])
        self._backward = BackwardCounter(self._params)
        self._t0 = time.perf_counter()
        self._updates = 0  # post-hook count
        self._pending = None  # (loss, batch, grad_clipped) reported before step()
        self._open: CapturedStep | None = None  # captured, waiting for observe() after step()
        self._row_slot = None  # ring slot of the latest captured step
        if not self._known_optimizer:
            self._warn("unknown-optimizer", f"optimizer {opt_class} is not Adam/AdamW/SGD: recording "
                       "weights, grads and whatever per-parameter state tensors it holds")
        self._hooks = [optimizer.register_step_pre_hook(self._pre_hook),
                       optimizer.register_step_post_hook(self._post_hook)]

    # ----------------------------------------------------------------- public API

    def observe(self, loss, batch=None, *, grad_clipped: bool | None = None) -> None:
        """Report the loss and batch of an optimizer step: after backward, before or after `step()`.

        Before `step()` they belong to the coming step; after it, to the step just taken (unless a
        backward pass ran in between: then to the coming one). `loss` is a tensor or float; `batch`
        a dict of tensors, or any nesting of dicts, lists and tuples of tensors, numpy arrays and
        numbers (keys flattened with "."; a bare tensor or sequence gets keys "0", "1", ...).
        """
        self._surface()
        try:
            value = float(loss.detach().item()) if isinstance(loss, torch.Tensor) else float(loss)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001
            self._fail("observe", e)
            return
        try:
            flat, dropped = flatten_batch(batch)
            if dropped:
                self._warn(f"dropped:{dropped}", f"batch entries that are not tensors, arrays or numbers are not "
                           f"recorded: {', '.join(dropped)}")
            step = self._open
            if step is not None and self._backward.count == step.backwards:
                self._open = None
                self._commit(step, value, flat, grad_clipped)
                return
            if step is not None:
                self._commit_missing()
            self._pending = (value, flat, grad_clipped)
        except Exception as e:  # noqa: BLE001
            self._fail("observe", e)

    @property
    def spikes(self) -> list:
        """Spikes seen so far (closed ones, plus the one still open with end=None)."""
        return self._snaps.spikes(self.detector.open)

    @property
    def step(self) -> int:
        """Index of the next optimizer step."""
        return self._step

    @property
    def status(self) -> WriteStatus:
        """Rows, events and snapshots written / waiting for a retry / lost, and why writing stopped."""
        return self._sink.status

    def set_loss(self, loss) -> None:
        """Rename the replay loss in run.json (an adapter may learn it at step 0); ValueError if no spec."""
        self.loss_spec = self.manifest["loss"] = loss_spec(loss)
        write_manifest(self.run_dir, self.manifest)

    def flush(self) -> None:
        """Write buffered rows as a (partial) chunk, retry earlier failed writes, wait until queued files are on disk."""
        self._sink.flush()
        self._surface()

    def close(self) -> None:
        """Remove the hooks, close an open spike (end=None), write the last chunk, retry what failed, wait for
        the writer and remove stale temp files. Warns once if something could not be written."""
        if self._closed:
            return
        self._closed = True
        for h in self._hooks:
            h.remove()
        self._backward.remove()
        try:
            if self._open is not None:
                self._commit_missing()
            for ev in self.detector.finish():
                self._sink.event(ev)
            slot = self._row_slot
            if slot is not None and self._snaps.enabled and self._sink.last_step() == self.ring.info[slot].step:
                self._sink.patch_last(self.ring.info[slot].step, "update_norm", self._scalars.update_norm(slot, None))
            self._sink.flush()  # snapshots queued behind the rows land first: "close" is the last event
            self._sink.event({"type": "close", "step": self._step - 1, "wall_time": time.perf_counter() - self._t0})
        except Exception as e:  # noqa: BLE001
            self._fail("close", e)
        finally:
            self._finalizer.detach()
            status = self._sink.finish()
        self._surface()
        if (status.rows_lost or status.events_lost) and not status.stopped:  # snapshot losses warned as they happened
            self._warn("lost", f"at close, {status.loss_summary()}; see Recorder.status")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- hooks and steps

    def _pre_hook(self, optimizer, args, kwargs) -> None:
        try:
            self._on_pre_step()
        except Exception as e:  # noqa: BLE001
            self._fail("pre-step hook", e)
        finally:
            self._step += 1

    def _post_hook(self, optimizer, args, kwargs) -> None:
        self._updates += 1  # the update norm of step t is taken at step t+1 from two ring slots

    def _on_pre_step(self) -> None:
        """Capture step t. With its loss already reported, finish it here; otherwise it waits for observe()
        (captured whatever the stride: whether it opens a spike is not known before its loss)."""
        t = self._step
        self._surface()
        if self._open is not None:
            self._commit_missing()
        pending, self._pending = self._pending, None
        if self._sink.stopped:
            return
        loss, batch, clipped = pending if pending is not None else (None, {}, None)
        probe = self.probe.loss() if self.probe is not None and t % self.probe_every == 0 else None
        groups = group_hparams(self.optimizer)
        opt_step = optimizer_step(self.optimizer, self._params[0] if self._params else None, self._updates)
        events = self.detector.update(t, loss, probe=probe) if pending is not None else None
        slot = None
        if self._snaps.enabled and (events is None or t % self.stride == 0 or self._snaps.must_capture(t, events)):
            if not self._known_optimizer:
                for kind in discover_state_kinds(self.optimizer, self._params):
                    self.ring.add_kind(kind)
            meta = {"loss": math.nan if loss is None else loss, "optimizer_step": opt_step, "groups": groups,
                    "grad_clipped": clipped}
            try:
                slot = self.ring.capture(t, [p.grad for p in self._params],
                                         state_tensors(self.optimizer, self._params, self.ring.banks), batch, meta)
            except Exception as e:  # noqa: BLE001 - capture off, scalars go on
                self._fail("ring capture", e)
        prev, self._row_slot = self._row_slot, slot
        if prev is not None and slot is not None and prev != slot:
            self._sink.patch_last(t - 1, "update_norm", self._scalars.update_norm(prev, slot))
        row = self._scalars.row(t, time.perf_counter() - self._t0, probe, groups, opt_step, slot)
        step = CapturedStep(t, slot, probe, row, events, self._backward.count)
        if pending is None:
            self._open, self._sink.open_row = step, row
        else:
            self._commit(step, loss)

    def _commit(self, step: CapturedStep, loss: float | None, batch: dict | None = None, clipped=None) -> None:
        """Step `step.t` has its loss (None: never reported): detection, its row, its snapshots."""
        events = step.events
        if events is None:
            events = self.detector.update(step.t, loss, probe=step.probe)
            if batch is not None and step.slot is not None and self.ring.info[step.slot].step == step.t:
                self.ring.attach(step.slot, batch, loss=loss, grad_clipped=clipped)
        step.row["loss"] = math.nan if loss is None else loss
        step.row["spike_id"] = self.detector.current_spike_id
        self._sink.add_row(step.row)
        for ev in events:
            self._sink.event(ev)
        self._snaps.on_step(step.t, events, step.slot)

    def _commit_missing(self) -> None:
        step, self._open = self._open, None
        self._warn("no-observe", "an optimizer step ran without rec.observe(loss, batch) before or after it; "
                   "that step's loss is recorded as missing")
        self._commit(step, None)

    # ----------------------------------------------------------------- failures and warnings

    def _log_warning(self, message: str) -> None:
        if not self._sink.finished:
            self._sink.event({"type": "warning", "step": self._step, "message": message})

    def _fail(self, where: str, e: BaseException) -> None:
        if self.strict:
            raise e
        log.error("spike forensics: error in %s; capture disabled", where, exc_info=e)
        self._snaps.disable()
        self._warn(f"error:{where}", f"recorder error in {where} ({type(e).__name__}: {e}); snapshot capture "
                   "disabled, training continues")

    def _surface(self) -> None:
        """Warn about (or, strict, raise) the writer's trouble, on the training thread."""
        for kind, message in self._sink.take_problems():
            if self.strict:
                raise RuntimeError(f"spike forensics: {message}")
            if kind in ("snapshot", "stopped", "crash"):
                self._snaps.disable()
            self._warn(kind, message if kind == "stopped" or kind not in ("snapshot", "crash")
                       else message + "; snapshot capture disabled, training continues")


__all__ = ["Recorder", "RecorderWarning", "WriteStatus", "unwrap_model"]
