"""Hugging Face adapter: a `TrainerCallback` that drives the project's `Recorder`, plus what replay needs.

Example:
    >>> from forensics.integrations.huggingface import SpikeForensicsTrainerCallback   # doctest: +SKIP
    >>> trainer = Trainer(model, args, train_dataset=ds,                                # doctest: +SKIP
    ...                   callbacks=[SpikeForensicsTrainerCallback("runs/my-run")])

How the Trainer's steps map onto the recorder (one optimizer step = one recorded step):

- the Trainer passes no per-step loss to callbacks, so a forward hook on the model keeps
  `output.loss` and the batch (`input_ids`, `labels`, `attention_mask`, ... tensors) of every
  training micro-batch (only in training mode with grad enabled, so evaluation is not counted);
- the step's loss combines the micro-batches as the Trainer's gradient does: their sum when the
  model was given `num_items_in_batch` (each loss is then already divided by the step's token
  count), else their mean; the batch is the micro-batches concatenated along dim 0;
- `on_pre_optimizer_step` (after the Trainer's gradient clipping, before `optimizer.step()`)
  calls `Recorder.observe`; the Recorder's optimizer pre-hook (on the torch optimizer inside
  accelerate's wrapper) then captures weights, the clipped gradient and the Adam moments of t-1.

Only the world process zero records (`state.is_world_process_zero`). For the analyzer, run.json
names `model_from_config` below as the model factory with the model's whole config inline
(the config is also saved beside run.json as `hf_config.json`), and `causal_lm_loss` as the
loss of causal LMs: `analyze(run, allow_import=True)` rebuilds the model with no download.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from forensics.integrations._common import MicroBatches, grad_norm, unwrap_optimizer
from forensics.record.warn import WarnOnce
from forensics.rundir.model import trusted

CONFIG_FILE = "hf_config.json"
_CAUSAL_LOSS = "forensics.integrations.huggingface:causal_lm_loss"
_CAUSAL_LOSS_LABEL_COUNT = "forensics.integrations.huggingface:causal_lm_loss_label_count"
_NOT_BATCH = {"num_items_in_batch", "return_dict", "use_cache", "output_attentions", "output_hidden_states"}


def _logits(out) -> torch.Tensor:
    """The logits of a model output, by the analyzer's one reduction (`replay.output_tensor`)."""
    from forensics.analyzer.replay import output_tensor

    return output_tensor(out)


@trusted
def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over the shifted labels that are not -100 (HF's `ForCausalLMLoss`).

    logits (B, T, V) predict labels shifted by one: L = mean_{b,t<T-1, y≠-100} CE(logits[b,t], labels[b,t+1]).
    A live model's `ModelOutput` (or a dict / tuple) is reduced to its logits first.
    """
    logits = _logits(logits)[..., :-1, :].float()                      # (B, T-1, V)
    target = labels[..., 1:].to(logits.device)               # (B, T-1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)


@trusted
def causal_lm_loss_label_count(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`causal_lm_loss`'s sum divided by the count of *unshifted* labels that are not -100.

    This is what `Trainer` optimises when it passes `num_items_in_batch` but does not know the
    model's loss shifts labels (models whose config has no `loss_type`, e.g. GPT-2 in
    transformers 5): the count includes position 0 of each row, so the loss is (T-1)/T of the mean.
    """
    logits = _logits(logits)[..., :-1, :].float()                      # (B, T-1, V)
    target = labels[..., 1:].to(logits.device)               # (B, T-1)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                            reduction="sum")
    return total / labels.ne(-100).sum().clamp_min(1)


@trusted
def model_from_config(config: dict, architecture: str, output: str = "logits") -> torch.nn.Module:
    """Rebuild a randomly initialised `transformers.<architecture>` from its config.

    `config` is the config dict (from run.json; Python callers may also pass a path to a JSON file).

    No download: the config is all it needs. The model's `forward(input_ids)` returns
    `output.<output>` (the logits), which is what the analyzer's replay evaluates, and attention
    runs in the "eager" implementation (the same math as SDPA, with double backward for HVPs).
    Parameter names are the Hugging Face ones, so a snapshot's `param/` tensors load as they are.
    """
    import transformers

    if not (isinstance(output, str) and output.isidentifier() and not output.startswith("_")):
        raise ValueError(f"output must name a field of the model's output, got {output!r}")
    cls = getattr(transformers, str(architecture), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"{architecture!r} is not a transformers model class")
    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text())
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError("config must be a Hugging Face config dict (with model_type) or a path to one")
    cfg = transformers.AutoConfig.for_model(**config)
    try:
        model = cls._from_config(cfg, attn_implementation="eager")
    except (TypeError, ValueError):
        model = cls(cfg)
    forward = type(model).forward
    import inspect

    extra = {"use_cache": False} if "use_cache" in inspect.signature(forward).parameters else {}

    def forward_logits(self, input_ids, attention_mask=None):
        kw = {} if attention_mask is None else {"attention_mask": attention_mask}
        return getattr(forward(self, input_ids=input_ids, **kw, **extra), output)

    model.forward = types.MethodType(forward_logits, model)
    return model


def _is_causal_lm(model) -> bool:
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        if type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
            return True
    except ImportError:
        pass
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


class SpikeForensicsTrainerCallback(TrainerCallback):
    """Record loss spikes of a `transformers.Trainer` run into `run_dir` (see docs/integrations.md).

    Defaults: `batch_keys=("input_ids", "labels")`; `loss` is `causal_lm_loss` for causal LMs
    and "cross_entropy" otherwise; `model_factory` is `model_from_config` with the model's
    config. Other keyword arguments go to `forensics.record.recorder.Recorder` (`detector`,
    `ring_size`, `tail`, `max_bytes`, `task`, `strict`...).
    """

    def __init__(self, run_dir, *, model_factory: str | None = None, model_kwargs: dict | None = None,
                 loss=None, batch_keys=("input_ids", "labels"), **recorder_options: Any):
        self.run_dir = Path(run_dir)
        self.model_factory, self.model_kwargs = model_factory, model_kwargs
        self.loss, self.batch_keys = loss, batch_keys
        self.recorder_options = recorder_options
        self.recorder = None
        self._model = None
        self._handle = None
        self._micro = MicroBatches()
        self._summed = False
        self._num_items: float | None = None
        self._loss_checked = self.loss is not None  # only a default loss is adjusted to the Trainer's count
        self._warn = WarnOnce()

    # ----------------------------------------------------------------- lifecycle

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        """Create the Recorder over the torch optimizer (under accelerate's wrapper) on process zero."""
        if not state.is_world_process_zero or self.recorder is not None:
            return
        if model is None or optimizer is None:
            self._warn("no-model",
                       "the Trainer passed no model/optimizer to on_train_begin; nothing is recorded")
            return
        from forensics.record.recorder import Recorder, unwrap_model

        model = unwrap_model(model)  # torch.compile: the names, config and class of the model inside
        config = getattr(model, "config", None)  # no model_factory: the Recorder names model_from_config
        loss = self.loss or (_CAUSAL_LOSS if _is_causal_lm(model) else "cross_entropy")
        self._model = model
        options = dict(self.recorder_options)
        if state.global_step > 0 and "resume" not in options:  # resume_from_checkpoint: same run dir
            options.update(resume=True, start_step=state.global_step)
        # run.json is written once, by the Recorder, with the config's file name; the file itself is
        # saved after the Recorder has made the run directory ready (overwrite=True clears an old run)
        scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer under fp16
        if scaler is not None and "scaler" not in options:  # steps the scaler skips are recorded too
            options["scaler"] = scaler
        self.recorder = Recorder(model, unwrap_optimizer(optimizer), self.run_dir,
                                 model_factory=self.model_factory, model_kwargs=self.model_kwargs, loss=loss,
                                 batch_keys=self.batch_keys,
                                 hf_config=None if config is None else CONFIG_FILE, **options)
        if config is not None:
            config.to_json_file(str(self.run_dir / CONFIG_FILE))
        self._handle = model.register_forward_hook(self._forward_hook, with_kwargs=True)

    def on_train_end(self, args, state, control, **kwargs):
        """Close the recorder: the last chunk and queued snapshots are written."""
        self._close()

    # ----------------------------------------------------------------- per step

    def on_step_begin(self, args, state, control, **kwargs):
        """A new optimizer step starts: forget micro-batches of a step that never reached the optimizer."""
        self._micro.clear()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        """Report the step's loss and batch (gradients are accumulated and clipped by now)."""
        if self.recorder is None:
            return
        parts = list(self._micro.losses)  # each micro-batch's loss as the model returned it
        loss, batch = self._micro.take("sum" if self._summed else "mean")
        if loss is None:
            return  # no training forward seen: the recorder logs the step's loss as missing
        across = getattr(args, "average_tokens_across_devices", False)
        if self._summed and getattr(args, "world_size", 1) > 1 and across:
            loss *= args.world_size  # num_items_in_batch counted every rank's tokens; this is rank 0's mean
        if state.global_step != self.recorder.step:
            self._warn("step", f"Trainer global_step {state.global_step} differs from the recorder's step "
                       f"{self.recorder.step} (resumed run?); the run directory counts from 0")
        if not self._loss_checked:
            self._check_loss_count(batch)
        self.recorder.observe(loss, batch, grad_clipped=self._clipped(args),
                              micro_losses=parts if len(parts) > 1 else None)

    # ----------------------------------------------------------------- helpers

    def _forward_hook(self, module, args, kwargs, output):
        if not (module.training and torch.is_grad_enabled()):
            return
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if loss is None:
            return
        batch = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor) and k not in _NOT_BATCH}
        if args and isinstance(args[0], torch.Tensor) and "input_ids" not in batch:
            batch["input_ids"] = args[0]
        num_items = kwargs.get("num_items_in_batch")
        self._summed = num_items is not None
        self._num_items = float(num_items.sum() if isinstance(num_items, torch.Tensor) else num_items) \
            if self._summed else None
        mask = batch.get("attention_mask")
        if mask is not None and mask.dim() == 2 and bool((mask[:, 1:] > mask[:, :-1]).any()):
            self._warn("padding", "left/inner padding in attention_mask: the analyzer's replay feeds "
                       "input_ids without the mask, exact only for right padding")
        self._micro.add_loss(loss)
        self._micro.add_batch(batch)

    def _check_loss_count(self, batch: dict) -> None:
        """On the first step, name the loss whose normalisation the Trainer really used in run.json.

        With `num_items_in_batch` the model's loss is sum / N. If N counted the unshifted labels
        (see `causal_lm_loss_label_count`), replay must divide by that count too, or its loss and
        gradient are (T-1)/T of the recorded ones.
        """
        self._loss_checked = True
        labels = batch.get("labels")
        if self._num_items is None or labels is None or self.recorder.loss_spec != _CAUSAL_LOSS:
            return
        n_all, n_shifted = int(labels.ne(-100).sum()), int(labels[..., 1:].ne(-100).sum())
        if n_all != n_shifted and abs(self._num_items - n_all) < 0.5:
            self.recorder.set_loss(_CAUSAL_LOSS_LABEL_COUNT)

    def _clipped(self, args) -> bool | None:
        """Whether the Trainer's clipping scaled this gradient (its post-clip norm sits at max_grad_norm)."""
        max_norm = float(getattr(args, "max_grad_norm", 0) or 0)
        if max_norm <= 0:
            return False
        # clip_grad_norm_ multiplies by max_norm / (norm + 1e-6): a clipped gradient has norm just
        # below max_norm
        return grad_norm(self._model.parameters()) >= max_norm * (1 - 1e-4)

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.recorder is not None:
            rec, self.recorder = self.recorder, None
            rec.close()


__all__ = ["SpikeForensicsTrainerCallback", "causal_lm_loss", "causal_lm_loss_label_count",
           "model_from_config"]
