"""Replays a recorded step functionally: the rebuilt model, its loss, and a snapshot's tensors.

Every measurement runs on `torch.func.functional_call(model, params, (x,))` with the
snapshot's parameters, so one rebuilt module serves every snapshot of a run and nothing
is copied into the module itself. Tied parameters are recorded once and re-tied by
`functional_call` (tie_weights=True). Buffers (e.g. BatchNorm statistics) are not part of
a snapshot: the module's own buffers are used, and the replay runs in training mode to
reproduce the loss the optimizer saw (dropout makes it stochastic; the zoo has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from forensics.losses import from_running_main, resolve_loss
from forensics.rundir.model import build_model

Params = dict[str, torch.Tensor]


def output_tensor(out):
    """`out` if it is a tensor; else its "logits" (ModelOutput, dict) or a tuple's first tensor;
    else `out` unchanged (the loss then raises, and the engine's failure names it)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if hasattr(out, "get") else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, torch.Tensor)), out)
    return out


ATTENTION_NOTE = ("attention: scaled_dot_product_attention is replayed on its math kernel "
                  "(SDPBackend.MATH), on CPU and CUDA, by the engines that differentiate: the fused "
                  "kernels have no double backward, which the Hessian-vector products need; the "
                  "forward-only engines (data, logits, attention, numerical) keep torch's default kernel")


def uses_attention(model: nn.Module) -> bool:
    """Whether `model` holds attention (torch's MultiheadAttention / Transformer layers, or a
    module whose class name contains "Attention" or whose forward calls
    scaled_dot_product_attention): then its replay notes the attention kernel."""
    import inspect

    seen: set[type] = set()
    for m in model.modules():
        if type(m) in seen:
            continue
        seen.add(type(m))
        if isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) \
                or "attention" in type(m).__name__.lower():
            return True
        try:
            if "scaled_dot_product_attention" in inspect.getsource(type(m).forward):
                return True
        except (OSError, TypeError):
            continue
    return False


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present and not overridden, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Replay:
    """A rebuilt model and loss on a device, evaluated functionally on snapshot tensors."""

    model: nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    input_key: str
    target_key: str
    device: torch.device
    dtype: torch.dtype = torch.float32
    notes: tuple[str, ...] = ()

    @classmethod
    def from_run(cls, run, *, model: nn.Module | None = None, device=None,
                 allow_import: bool = False, dtype: torch.dtype = torch.float32,
                 loss_fn: Callable | None = None) -> "Replay":
        """Rebuild the run's model and loss, or take the live `model` / `loss_fn` (then the
        factory / loss named in run.json is not imported). With a live `model`, a loss named
        "__main__:fn" is looked up in this process's running script (nothing imported).
        Raises PermissionError (an import without consent) or ValueError (unresolvable)
        naming what could not be rebuilt."""
        manifest = run.manifest
        live = model is not None
        if model is None:
            try:
                model = build_model(manifest, allow_import=allow_import)
            except (PermissionError, ValueError) as exc:
                raise type(exc)(f"model not rebuilt: {exc}") from exc
        dev = pick_device(device)
        model = model.to(device=dev, dtype=dtype).train()
        keys = manifest.get("batch_keys") or {}
        if loss_fn is None and live:
            loss_fn = from_running_main(manifest.get("loss", "mse"))
        if loss_fn is None:
            try:
                loss_fn = resolve_loss(manifest.get("loss", "mse"), allow_import=allow_import)
            except (PermissionError, ValueError) as exc:
                raise type(exc)(f"loss not rebuilt: {exc} (pass loss_fn= to use the live "
                                "loss)") from exc
        notes = (ATTENTION_NOTE,) if uses_attention(model) else ()
        return cls(model, loss_fn, keys.get("input", "x"), keys.get("target", "y"), dev, dtype, notes)

    def tensors(self, named: dict[str, torch.Tensor]) -> Params:
        """Snapshot tensors moved to the replay device and dtype (floating ones only cast)."""
        return {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in named.items()}

    def outputs(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The model's outputs at `params` on input `x` (functional: the module is untouched).
        A live model's structured output is reduced to the tensor the loss takes: `.logits`
        of a Hugging Face `ModelOutput` (or a dict's "logits"), or a tuple's first tensor."""
        return output_tensor(functional_call(self.model, params, (x,), tie_weights=True,
                                             strict=False))

    def loss(self, params: Params, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The run's loss of the model at `params` on `batch` (a scalar tensor)."""
        x, y = batch[self.input_key], batch[self.target_key]
        return self.loss_fn(self.outputs(params, x), y)

    def batch(self, snapshot) -> dict[str, torch.Tensor]:
        """The snapshot's batch on the device; ValueError naming what is missing."""
        missing = [k for k in (self.input_key, self.target_key) if k not in snapshot.batch]
        if missing:
            raise ValueError(f"snapshot of step {snapshot.step} has no batch entries {missing}")
        return self.tensors(snapshot.batch)
