"""The objective the detector watches in minibatch training: the loss of the model on a fixed probe
set, without gradients. `AutoProbe` draws that set from the first batches of the run."""

from __future__ import annotations

from pathlib import Path

import torch

PROBE_FILE = "probe.safetensors"  # the probe set of an auto probe, for a resumed run


class Probe:
    """The loss of the model on a fixed probe batch, in eval mode and without gradients."""

    def __init__(self, model, batch: dict, batch_keys: dict, loss_spec: str, loss_fn=None):
        self.model, self.batch, self.keys = model, batch, batch_keys
        self.loss_spec, self._loss_fn = loss_spec, loss_fn
        self._needs_eval: bool | None = None
        if not {batch_keys["input"], batch_keys["target"]} <= set(batch):
            raise ValueError(f"probe must hold the batch keys {batch_keys['input']!r} and "
                             f"{batch_keys['target']!r}, got {sorted(batch)}")

    def loss(self) -> float:
        """The probe loss at the current weights (a float; NaN/Inf kept)."""
        return float(self.loss_tensor().item())

    def loss_tensor(self) -> torch.Tensor:
        """The probe loss at the current weights as a 0-d float tensor on the model's device (no
        host-device sync: the recorder fetches it with the step's other scalars)."""
        if self._loss_fn is None:
            from forensics.losses import resolve_loss

            self._loss_fn = resolve_loss(self.loss_spec, allow_import=True)
        toggle = self._toggle()
        was_training = self.model.training
        if toggle:
            self.model.eval()
        try:
            with torch.inference_mode():
                out = self.model(self.batch[self.keys["input"]])
                out = out if isinstance(out, torch.Tensor) else getattr(out, "logits", out)  # HF ModelOutput
                return self._loss_fn(out, self.batch[self.keys["target"]]).float()
        finally:
            if toggle:
                self.model.train(was_training)

    def _toggle(self) -> bool:
        """Whether eval mode changes the forward (dropout, batch norm, or an unknown module type
        whose forward may read `training`); decided once: walking the modules every step costs."""
        if self._needs_eval is None:
            plain = (torch.nn.Linear, torch.nn.Sequential, torch.nn.ModuleList, torch.nn.Tanh,
                     torch.nn.ReLU, torch.nn.GELU, torch.nn.Embedding, torch.nn.LayerNorm, torch.nn.Identity)
            self._needs_eval = not all(type(m) in plain for m in self.model.modules())
        return self._needs_eval


class AutoProbe:
    """Collects the input and target of the first `batches` batches, at most `size` samples and at
    most `terms` loss terms (a sample's terms: `terms_per_sample`, e.g. the tokens of a sequence; a
    one-hot or soft-label row is one term, so a 1000-class one-hot target keeps `size` samples, not
    4; at least one sample is kept).

    `offer(batch)` per observed step returns None while collecting (at least until the second
    batch, even when the first one holds `size` samples), then once a decision:
    ("probe", {input, target}) with the samples concatenated along dim 0, or ("off", reason) when
    the second batch equals the first (full-batch training: the loss is the objective) or the
    batches cannot be concatenated (no common leading sample dimension). While collecting, once a
    second, different batch was seen, `first` holds the first batch (the interim probe).
    """

    def __init__(self, batch_keys: dict, *, size: int, batches: int, terms: int | None = None):
        self.keys, self.size, self.batches = (batch_keys["input"], batch_keys["target"]), size, batches
        self.terms = terms
        self.first: dict | None = None  # the first batch, once a second, different one was seen
        self.parts: list[dict] = []
        self.samples = 0
        self.first_rows = 0  # rows of the first batch (its stored part may be cut to `size`)
        self.all_same = True
        self.done = False

    def offer(self, batch: dict):
        """Add one step's (flat) batch; see the class docstring for the return value."""
        if self.done:
            return None
        if not set(self.keys) <= set(batch):
            return self._finish(("off", f"the batch lacks {self.keys[0]!r} or {self.keys[1]!r}"))
        part = {k: batch[k].detach() for k in self.keys}
        n = part[self.keys[0]].shape[0] if part[self.keys[0]].dim() else 0
        if n == 0 or part[self.keys[1]].dim() == 0 or part[self.keys[1]].shape[0] != n:
            return self._finish(("off", "input and target have no common leading sample dimension"))
        if self.parts:
            first = self.parts[0]
            self.all_same = self.all_same and n == self.first_rows and all(  # first may be cut to size
                part[k].shape[1:] == first[k].shape[1:] and torch.equal(part[k][: len(first[k])], first[k])
                for k in self.keys)
            if self.all_same:  # the second batch is the first: full-batch training, decided now
                return self._finish(("off", "the first batches are the same batch (full-batch training)"))
            self.first = self.first or {k: v.clone() for k, v in first.items()}
        self.first_rows = self.first_rows or n
        if self.terms and not self.parts:  # the sample budget in rows, from the target's elements per row
            per_row = terms_per_sample(part[self.keys[1]])
            self.size = min(self.size, max(1, self.terms // per_row))
        self.parts.append({k: v[: self.size - self.samples].clone() for k, v in part.items()})
        self.samples += min(n, self.size - self.samples)
        # a first batch that fills the probe alone decides nothing yet: the second batch tells
        # full-batch training (the same batch again: probe off) from minibatches
        if len(self.parts) >= self.batches or (self.samples >= self.size and len(self.parts) > 1):
            return self._finish(self._decide())
        return None

    def _decide(self):
        if len(self.parts) > 1 and self.all_same:
            return ("off", "the first batches are all the same batch (full-batch training)")
        try:
            return ("probe", {k: torch.cat([p[k] for p in self.parts]) for k in self.keys})
        except RuntimeError as e:
            return ("off", f"the batches cannot be concatenated ({e})")

    def _finish(self, decision):
        self.done, self.parts, self.first = True, [], None
        return decision


def terms_per_sample(target: torch.Tensor) -> int:
    """The loss terms one sample of `target` (dim 0: samples) contributes: its elements, except that a
    floating target's last dimension is one term (a one-hot or soft-label row over C classes, a
    regression vector): (B, T) tokens -> T, (B, H, W) class indices -> H·W, (B, C) one-hot -> 1,
    (B, T, C) soft labels -> T. At least 1."""
    row = target[0]
    if target.is_floating_point() and row.dim() >= 1:
        return max(1, row.numel() // max(1, row.shape[-1]))
    return max(1, row.numel())


def save_probe(run_dir: Path | str, batch: dict) -> None:
    """Write the probe set to `run_dir/probe.safetensors` atomically (tensors only)."""
    from safetensors.torch import save_file

    from forensics.rundir.atomic import write_with

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in batch.items()}
    write_with(Path(run_dir) / PROBE_FILE, lambda tmp: save_file(tensors, str(tmp)))


def load_probe(run_dir: Path | str, device) -> dict | None:
    """The probe set written by `save_probe`, on `device`; None if there is none."""
    from safetensors.torch import load_file

    path = Path(run_dir) / PROBE_FILE
    if not path.is_file():
        return None
    return {k: v.to(device) for k, v in load_file(str(path)).items()}


__all__ = ["PROBE_FILE", "AutoProbe", "Probe", "load_probe", "save_probe", "terms_per_sample"]
