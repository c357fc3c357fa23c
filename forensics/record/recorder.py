"""The Recorder: rides the training loop, keeps the last K states in a ring, writes the black box on a spike.

Example:
    >>> rec = Recorder(model, optimizer, "runs/my-run", loss="mse")   # doctest: +SKIP
    >>> for x, y in loader:                                            # doctest: +SKIP
    ...     optimizer.zero_grad(); loss = F.mse_loss(model(x), y); loss.backward()
    ...     rec.observe(loss, {"x": x, "y": y})   # after backward; before or after optimizer.step()
    ...     optimizer.step()
    >>> rec.close()                                                    # doctest: +SKIP
"""

from __future__ import annotations

import time
import warnings
import weakref
from pathlib import Path

import torch

from forensics.integrations.hf_model import hf_factory
from forensics.record.amp import AutoScalerWatch, ScalerWatch
from forensics.record.capture import SnapshotPolicy
from forensics.record.config import RecorderConfig
from forensics.record.detector import SpikeDetector
from forensics.record.distributed import (
    GlobalMean, RankSetup, gather_batch, gather_full, share_resume, sharded, unwrap_ddp,
)
from forensics.record.guard import prepare_run_dir
from forensics.record.inputs import batch_key_map, flatten_batch, loss_spec, unwrap_model
from forensics.record.lazy import Deferred, LazyInputs
from forensics.record.logit_scalars import logit_columns
from forensics.record.optim import (
    class_path, is_adam, state_kinds,
)
from forensics.record.order import BackwardCounter, CapturedStep
from forensics.record.modes import build_rings, choose_mode, state_bytes
from forensics.record.objective import Objective
from forensics.record.resume import open_manifest, restore, resume_point
from forensics.record.scalars import StepScalars
from forensics.record.sink import RunSink
from forensics.record.stepping import HParams, StepLoop
from forensics.record.status import FailurePolicy, WriteStatus, finish_unclosed
from forensics.record.warn import RecorderWarning, WarnOnce
from forensics.rundir.format import SNAPSHOTS_DIR, STEPS_DIR
from forensics.rundir.manifest import param_names, write_manifest
from forensics.rundir.spikes import spikes_from_events

class Recorder(StepLoop, FailurePolicy):
    """Flight recorder for one training run; see README.md for the three-line usage.

    Hooks `optimizer` with `register_step_pre_hook` (capture state t into the ring: weights before
    update t, gradient, optimizer state) and `register_step_post_hook` (update count). `observe()`
    may come before or after `optimizer.step()` (docs/integrations.md). Files are written on a
    background thread; step rows and events that fail to write are kept (at most `max_pending_rows`
    rows) and retried. Recorder failures are warned about (`RecorderWarning`) and counted in
    `status`, never raised into the training loop unless `strict=True`. Without `close()`, buffered
    rows are flushed when the recorder is garbage-collected or the interpreter exits.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run_dir,
                 config: RecorderConfig | None = None, *, scaler=None, **options):
        cfg = (config or RecorderConfig()).with_options(**options)
        self.config = cfg
        keys = batch_key_map(cfg.batch_keys)
        model = unwrap_model(unwrap_ddp(model))
        shards = sharded(list(model.parameters()))  # FSDP2: each rank's ring holds its shards
        self._ranks = RankSetup(run_dir)  # rank 0 (or one process) writes run_dir; other ranks a temp folder
        run_dir = self._ranks.run_dir
        self.model, self.optimizer, self.strict = model, optimizer, cfg.strict
        self.run_dir, self.loss_spec, self.batch_keys = Path(run_dir), loss_spec(cfg.loss), keys
        self.detector = SpikeDetector(cfg.detector_config)
        resuming = prepare_run_dir(self.run_dir, cfg.overwrite, cfg.resume)
        point = resume_point(self.run_dir, cfg.start_step) if resuming else None
        if cfg.resume and self._ranks.distributed:  # every rank continues from rank 0's point
            point = share_resume(point, self.run_dir, self._ranks.writer)
        if cfg.resume and point is None and self._ranks.writer:  # a mistyped path loses the history
            warnings.warn(f"spike forensics: resume=True but {self.run_dir} holds no run (no run.json): "
                          "starting a new run there", RecorderWarning, stacklevel=2)
        self.ring_size, self.stride, self.probe_every = cfg.ring_size, cfg.stride, cfg.probe_every
        named, _ = param_names(model)
        self._params = [p for _, p in named]
        name_of = {id(p): n for n, p in named}
        kinds, self._known_optimizer = state_kinds(optimizer)
        hf = hf_factory(model) if cfg.model_factory is None else None  # a transformers model: its config
        if hf is not None:
            cfg = cfg.with_options(model_factory=hf[0], model_kwargs=hf[1])
        cfg, _, mode_message = choose_mode(cfg, self._params, kinds, self._ranks.distributed)
        self.config, self.mode, self.sync_every = cfg, cfg.mode, cfg.sync_every
        self.objective = Objective(model, cfg, keys, self.loss_spec, self.run_dir)
        self.manifest, self.run_id = open_manifest(self.run_dir, cfg, resuming, model, optimizer, keys,
                                                   self.loss_spec, self.detector, self.objective)
        if point is not None and not resuming:  # a non-writing rank of a resumed run: rank 0's probe set
            self.objective.restore()
        (self.run_dir / STEPS_DIR).mkdir(exist_ok=True)
        (self.run_dir / SNAPSHOTS_DIR).mkdir(exist_ok=True)
        self._sink = RunSink(self.run_dir, steps_chunk=cfg.steps_chunk, max_pending_rows=cfg.max_pending_rows,
                             first_chunk=point.next_chunk if point else 0)
        self._finalizer = weakref.finalize(self, finish_unclosed, self._sink)  # holds the sink, not self
        self._closed = False
        self._step = point.start_step if point else 0  # index of the next optimizer step
        self._last_committed = self._step - 1
        self._spike_events: list[dict] = []  # the detector's events, for `spikes`
        self._warn = WarnOnce(on_first=self._log_warning)
        group_names = [[name_of.get(id(p), f"<unnamed:{i}>") for i, p in enumerate(g["params"])]
                       for g in optimizer.param_groups]
        self.ring, self.context = build_rings(
            cfg, [n for n, _ in named], self._params, kinds, model=model, optimizer=optimizer,
            loss_fn=cfg.loss if callable(cfg.loss) else self.loss_spec, keys=(keys["input"], keys["target"]),
            group_names=group_names,
            warn=self._warn)
        if mode_message:
            self._warn("mode", mode_message)
        self._adam = is_adam(optimizer)
        self._deferred, self._queue, self._hparams = Deferred(), [], HParams()
        summed = GlobalMean(self._deferred, self._ranks.world, mean=False) if shards else None
        self._scalars = StepScalars(self.ring, self._params, self._adam, self._deferred, summed)
        self._sink.queued, self._sink.deferred = self._queue, self._deferred
        self._global = GlobalMean(self._deferred, self._ranks.world)
        opt_class = class_path(optimizer)
        self._snaps = SnapshotPolicy(
            self.ring, self._sink, self._warn, ring_size=cfg.ring_size, tail=cfg.tail,
            baseline_every=cfg.baseline_every, max_spikes=cfg.max_spikes, max_bytes=cfg.max_bytes,
            run_id=self.run_id, optimizer=optimizer, opt_class=opt_class, context=self.context,
            group_names=group_names, gather=gather_batch if self._ranks.distributed else None,
            full=gather_full if shards else None,
            slot_bytes=state_bytes(self._params, kinds) if shards else None,
            writes=self._ranks.writer)
        if point is not None:
            restore(point, self.detector, self._snaps, self._sink, self._step)
        self._backward = BackwardCounter(self._params)
        self._t0 = time.perf_counter()
        self._updates = 0  # post-hook count
        self._pending = LazyInputs()  # the micro-batches reported before step()
        self._open: CapturedStep | None = None  # captured, waiting for observe() after step()
        self._row_slot = None  # ring slot of the latest captured step
        self._logit_row: dict = {}  # opt-in logit/attention columns of the next committed row
        if not self._known_optimizer:
            self._warn("unknown-optimizer", f"optimizer {opt_class} is not Adam/AdamW/SGD: recording "
                       "weights, grads and whatever per-parameter state tensors it holds")
        self._hooks = [optimizer.register_step_pre_hook(self._pre_hook),
                       optimizer.register_step_post_hook(self._post_hook)]
        self._amp = (AutoScalerWatch(optimizer, lambda: self._step, self._skipped) if scaler is None
                     else ScalerWatch(scaler, optimizer, lambda: self._step, self._skipped))

    # ----------------------------------------------------------------- public API

    def observe(self, loss, batch=None, *, grad_clipped: bool | None = None, micro_losses=None,
                logits=None, attention=None) -> None:
        """Report the loss and batch of an optimizer step: after backward, before or after `step()`.

        Before `step()` they belong to the coming step; after it, to the step just taken (unless a
        backward pass ran in between: then to the coming one). Several calls before one `step()` are
        its micro-batches (gradient accumulation; each with its own loss): the step's loss is their
        mean, its batch their concatenation along dim 0. `loss` is a tensor or float; `batch`
        a dict of tensors, or any nesting of dicts, lists and tuples of tensors, numpy arrays and
        numbers (keys flattened with "."; a bare tensor or sequence gets keys "0", "1", ...).
        `micro_losses`: an adapter that combined the micro-batches itself passes their losses here.
        Opt-in: `logits` (the loss's input) and `attention` (an `AttentionMaxima`) fill the columns
        logit_max, log_z_mean, attn_logit_max (`forensics.record.logit_scalars`).
        """
        self._surface()
        try:
            value = loss.detach() if isinstance(loss, torch.Tensor) else float(loss)  # fetched later, no sync
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001
            self._fail("observe", e)
            return
        try:
            flat, dropped = flatten_batch(batch)
            if logits is not None or attention is not None:
                target = (flat or {}).get(self.batch_keys["target"])
                self._logit_row = logit_columns(logits, target, attention)
            if dropped:
                self._warn(f"dropped:{dropped}", "batch entries that are not tensors, arrays or numbers "
                           f"are not recorded: {', '.join(dropped)}")
            step = self._open
            if step is not None and self._backward.count == step.backwards:
                self._open = None
                self._complete(step, value, flat, grad_clipped)
                return
            if step is not None:
                self._commit_missing()
            self._pending.add(value, flat, grad_clipped, micro_losses)
        except Exception as e:  # noqa: BLE001
            self._fail("observe", e)

    @property
    def spikes(self) -> list:
        """Spike episodes seen so far in this process (closed ones, plus one still open with end=None),
        built like a recorded run's (`forensics.rundir.spikes.spikes_from_events`). Fetches the steps
        waiting for detection first (one host-device sync)."""
        self._drain()
        return spikes_from_events(self._spike_events)

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
        """Fetch and commit the queued steps, write buffered rows as a (partial) chunk, retry failed writes,
        block until all is on disk."""
        self._drain()
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
        if self.mode == "keyframe" and self.ring is not None:
            self.ring.remove()
        if self._amp is not None:
            self._amp.remove()
        try:
            if self._open is not None:
                self._commit_missing()
            self._drain()
            self._save_state()  # before finish(): a resumed run continues an open episode
            for ev in self.detector.finish():
                self._sink.event(ev)
                self._spike_events.append(ev)
            slot = self._row_slot
            last = self._sink.last_step()
            if (slot is not None and self.mode == "dense" and self._snaps.enabled
                    and last == self.ring.info[slot].step):
                self._sink.patch_last(last, "update_norm", self._scalars.update_norm(slot, None))
            self._sink.flush()  # snapshots queued behind the rows land first: "close" is the last event
            self._sink.event({"type": "close", "step": self._step - 1,
                              "wall_time": time.perf_counter() - self._t0})
        except Exception as e:  # noqa: BLE001
            self._fail("close", e)
        finally:
            self._finalizer.detach()
            status = self._sink.finish()
            self._ranks.cleanup()
        self._surface()
        if (status.rows_lost or status.events_lost) and not status.stopped:  # snapshot losses: warned
            self._warn("lost", f"at close, {status.loss_summary()}; see Recorder.status")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

__all__ = ["Recorder", "RecorderWarning", "WriteStatus", "unwrap_model"]
