"""PyTorch Lightning adapter: a `Callback` that drives the project's `Recorder` from Lightning's hooks.

Example:
    >>> from forensics.integrations.lightning import SpikeForensicsCallback      # doctest: +SKIP
    >>> trainer = L.Trainer(callbacks=[SpikeForensicsCallback("runs/my-run")])   # doctest: +SKIP

How the hooks map onto the recorder (one optimizer step = one recorded step):

- `on_train_batch_start` keeps the batch, `on_before_backward` the loss of every micro-batch
  (Lightning hands it already divided by `accumulate_grad_batches`, so the step's loss is the sum);
- `on_before_optimizer_step` (the accumulated gradient is complete, unscaled under native AMP —
  Lightning's precision plugin unscales before this hook — and the Adam moments are still those of
  step t-1) calls `Recorder.observe` with the loss, the micro-batches concatenated along dim 0, and
  whether gradient clipping will change this gradient;
- the Recorder captures in `optimizer.step()`'s pre-hook. Lightning passes a closure to `step()`
  and torch runs pre-hooks *before* the closure, so this callback registers a pre-hook ahead of
  the Recorder's that evaluates the closure first (see `_common.run_closure_first`): the snapshot
  then holds the gradient after Lightning's clipping, exactly what the update uses. With 16-bit
  native AMP Lightning calls the closure itself and `scaler.step()` later, so the order is right
  already; the precision plugin's GradScaler is handed to the Recorder (`scaler=`), so a step the
  scaler skips (inf/NaN gradients) is recorded too, marked `amp_skipped`, with its `loss_scale`.

Under a DDP strategy (`ddp`, `ddp_spawn`, ... — any strategy whose ranks share the default
`torch.distributed` process group) the Recorder is created on every rank and every rank observes every
step: the recorder all-reduces the loss (the run's loss is the global mean, not rank 0's) and gathers
every rank's batch shard at snapshots (`forensics.record.distributed`); rank 0 alone writes `run_dir`.
Without such a group only global rank 0 records (`trainer.is_global_zero`). The detector's
statistics go through `state_dict()` / `load_state_dict()`, so a run resumed from a Lightning
checkpoint keeps its baseline. A resumed fit needs a fresh `run_dir` (or `overwrite=True`): the
run directory format has no append mode, and the recorder's step counter starts at 0 again.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import torch

from forensics.integrations._common import MicroBatches, grad_absmax, grad_norm, run_closure_first


class SpikeForensicsCallback(pl.Callback):
    """Record loss spikes of a Lightning fit into `run_dir` (see docs/integrations.md).

    `model_factory`/`model_kwargs`/`loss` are written to run.json so the analyzer can rebuild
    the model; the rebuilt model must have the recorded parameter names, so when the network
    is a submodule of the LightningModule name it with `module="net"` (that submodule is then
    the recorded model). `batch_keys` maps a tuple batch positionally to `(input, target)`
    names (dict batches keep their tensor entries), or is a callable `batch -> dict` whose
    dict holds the input under "x" and the target under "y". Other keyword arguments go to
    `forensics.record.recorder.Recorder` (`detector`, `ring_size`, `tail`, `task`, `strict`...).
    """

    def __init__(self, run_dir, *, model_factory: str | None = None, model_kwargs: dict | None = None,
                 loss="mse", batch_keys=("x", "y"), module: str | None = None, **recorder_options: Any):
        super().__init__()
        if callable(batch_keys):
            self._batch_fn: Callable | None = batch_keys
            self._keys = ("x", "y")
        elif isinstance(batch_keys, (tuple, list)) and len(batch_keys) == 2:
            self._batch_fn, self._keys = None, (str(batch_keys[0]), str(batch_keys[1]))
        else:
            raise ValueError("batch_keys must be (input_key, target_key) or a callable batch -> dict, "
                             f"got {batch_keys!r}")
        self.run_dir = Path(run_dir)
        self.model_factory, self.model_kwargs = model_factory, model_kwargs
        self.loss, self.module = loss, module
        self.recorder_options = recorder_options
        self.recorder = None
        self._optimizer = None
        self._micro = MicroBatches()
        self._pending_state: dict | None = None
        self._hook = None
        self._final_state: dict | None = None

    # ----------------------------------------------------------------- lifecycle

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Create the Recorder over `trainer.optimizers[0]` (optimizers exist from here on): on every rank
        when the ranks share a `torch.distributed` process group (DDP strategies; rank 0 writes the run
        directory), on global rank 0 only otherwise (with a warning when several processes train)."""
        if self.recorder is not None or not self._records_here(trainer):
            return
        if not trainer.optimizers:
            warnings.warn("spike forensics: the LightningModule configured no optimizer; nothing is recorded",
                          stacklevel=2)
            return
        if len(trainer.optimizers) > 1:
            warnings.warn("spike forensics: several optimizers configured; "
                          "recording trainer.optimizers[0] only", stacklevel=2)
        from forensics.record.recorder import Recorder

        model = self._model(pl_module)
        self._optimizer = trainer.optimizers[0]
        # Registered before the Recorder's own pre-hook, so it fires first (see module docstring).
        self._hook = self._optimizer.register_step_pre_hook(run_closure_first())
        options = dict(self.recorder_options)
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        if scaler is not None and "scaler" not in options:  # 16-bit native AMP: skipped steps recorded too
            options["scaler"] = scaler
        if self._pending_state and "resume" not in options:  # a fit resumed from a checkpoint: same run dir
            options.update(resume=True, start_step=self._pending_state.get("step"))
        self.recorder = Recorder(model, self._optimizer, self.run_dir, model_factory=self.model_factory,
                                 model_kwargs=self.model_kwargs, loss=self.loss, batch_keys=self._keys,
                                 **options)
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Flush and close the recorder when fit ends normally."""
        self._close()

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                     exception: BaseException) -> None:
        """Flush and close the recorder when training raises, so the rows and events so far reach disk."""
        self._close()

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Close the recorder on teardown too (idempotent), in case neither hook above ran."""
        self._close()

    # ----------------------------------------------------------------- per step

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        """Keep the micro-batch (it is part of the next optimizer step's batch)."""
        if self.recorder is not None:
            self._micro.add_batch(self._batch_dict(batch))

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        """Keep the micro-batch loss (already divided by `accumulate_grad_batches`)."""
        if self.recorder is not None:
            self._micro.add_loss(loss)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Report the step's loss and batch; the Recorder captures the clipped gradient inside step()."""
        if self.recorder is None or optimizer is not self._optimizer:
            return
        parts = list(self._micro.losses)  # as Lightning hands them: divided by accumulate_grad_batches
        loss, batch = self._micro.take("sum")
        clipped = self._will_clip(trainer)
        if loss is None:
            return  # training_step returned None: the recorder logs the step's loss as missing
        self.recorder.observe(loss, batch, grad_clipped=clipped,
                              micro_losses=parts if len(parts) > 1 else None)

    # ----------------------------------------------------------------- resume

    def state_dict(self) -> dict:
        """The detector's statistics (so a resumed fit keeps its baseline) and the recorder's step."""
        if self.recorder is not None:
            return {"detector": self.recorder.detector.state_dict(), "step": self.recorder.step}
        return dict(self._final_state or self._pending_state or {})

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the detector's statistics now, or when the Recorder is created at fit start."""
        if not state_dict:
            return
        if self.recorder is not None:
            self._apply_state(state_dict)
        else:
            self._pending_state = dict(state_dict)

    # ----------------------------------------------------------------- helpers

    @staticmethod
    def _records_here(trainer) -> bool:
        """Whether this process creates a Recorder. Under a DDP strategy every rank must: the loss is
        all-reduced and snapshot batches gathered (collectives), so all ranks observe the same steps."""
        from forensics.record.distributed import rank_and_world

        world = int(getattr(trainer, "world_size", 1) or 1)
        if world > 1 and rank_and_world()[1] == world:
            return True
        if world > 1 and trainer.is_global_zero:
            warnings.warn(f"spike forensics: {world} processes train but they share no torch.distributed "
                          "process group; recording rank 0's local loss and batch only", stacklevel=3)
        return bool(trainer.is_global_zero)

    def _apply_state(self, state: dict) -> None:
        if "detector" in state:
            self.recorder.detector.load_state_dict(state["detector"])

    def _model(self, pl_module) -> torch.nn.Module:
        if self.module is None:
            return pl_module
        model = pl_module.get_submodule(self.module)
        return model

    def _batch_dict(self, batch) -> dict:
        if self._batch_fn is not None:
            out = self._batch_fn(batch)
            if not isinstance(out, dict):
                raise ValueError("batch_keys callable must return a dict of tensors, "
                                 f"got {type(out).__name__}")
            return out
        if isinstance(batch, dict):
            return batch  # nested entries, arrays and numbers are flattened by MicroBatches.add_batch
        if isinstance(batch, torch.Tensor):
            return {self._keys[0]: batch}
        if isinstance(batch, (tuple, list)):
            names = list(self._keys) + [str(i) for i in range(2, len(batch))]
            return dict(zip(names, batch, strict=False))
        return {"0": batch}

    def _will_clip(self, trainer) -> bool:
        """Whether Lightning's gradient clipping (applied right after this hook) changes this gradient."""
        clip = trainer.gradient_clip_val
        if not clip:
            return False
        params = self.recorder.model.parameters() if self.module else trainer.lightning_module.parameters()
        algo = str(getattr(trainer, "gradient_clip_algorithm", None) or "norm").lower()
        if algo.endswith("value"):
            return grad_absmax(params) > float(clip)
        # torch.nn.utils.clip_grad_norm_ scales by clip / (norm + 1e-6) when that is < 1
        return float(clip) / (grad_norm(params) + 1e-6) < 1.0

    def _close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.recorder is not None:
            rec, self.recorder = self.recorder, None
            self._final_state = {"detector": rec.detector.state_dict(), "step": rec.step}
            rec.close()


__all__ = ["SpikeForensicsCallback"]
