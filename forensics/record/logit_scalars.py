"""Opt-in per-step columns for the transformer instabilities: the output logits and attention.

`logit_columns(logits, targets)` gives the `steps/` columns `logit_max` (the largest output
logit) and `log_z_mean` (mean log Z = logsumexp over the vocabulary) over the tokens the loss
counts (targets −100 are padding): one logsumexp over the logits the loss already has, and one
device sync. `AttentionMaxima(model)` keeps forward taps on every attention
(`forensics.record.attention_taps`) and `take()` returns the largest max |q·kᵀ/√d| since the last
call, the `attn_logit_max` column: it recomputes each head's logits and softmax, so it costs about
one more attention per layer (opt in where that is cheap). Both are passed to
`Recorder.observe(loss, batch, logits=..., attention=...)`; the analyzer's `logits` and
`attention` engines read the columns, so the trend before an onset is visible at every step.
"""

from __future__ import annotations

import math

import torch

from forensics.math.attention import IGNORE_INDEX
from forensics.record.attention_taps import AttentionTaps

COLUMNS = ("logit_max", "log_z_mean", "attn_logit_max")


def logit_columns(logits, targets=None, attention: "AttentionMaxima | None" = None) -> dict:
    """{column: value} for one step: `logit_max`, `log_z_mean` from `logits` (..., V) over the
    tokens whose `targets` (...) are not −100 (every position when `targets` is None or does not
    match the logits' positions), `attn_logit_max` from `attention.take()`. A column without its
    input is left out; a step without counted tokens gives NaN."""
    out: dict[str, float] = {}
    if isinstance(logits, torch.Tensor) and logits.dim() >= 1 and logits.shape[-1] > 0:
        with torch.no_grad():
            flat = logits.detach().reshape(-1, logits.shape[-1]).float()
            if isinstance(targets, torch.Tensor) and targets.numel() == flat.shape[0]:
                flat = flat[targets.reshape(-1).to(flat.device) != IGNORE_INDEX]
            if flat.shape[0]:
                pair = torch.stack([flat.max(), torch.logsumexp(flat, dim=-1).mean()]).tolist()
            else:
                pair = [math.nan, math.nan]
        out["logit_max"], out["log_z_mean"] = pair
    if attention is not None:
        value = attention.take()
        if value is not None:
            out["attn_logit_max"] = value
    return out


class AttentionMaxima:
    """Persistent attention taps on `model`: `take()` is the largest max |q·kᵀ/√d| over every
    layer and head in the forward passes run with autograd on since the last `take()` (the
    training pass; the recorder's no-grad probe pass is left out), None when none ran. `remove()` (or `with`)
    takes the hooks off and restores `F.scaled_dot_product_attention`."""

    def __init__(self, model: torch.nn.Module):
        self._taps = AttentionTaps(model, grad_only=True).__enter__()

    def take(self) -> float | None:
        """The maximum since the last call, and start over."""
        layers, self._taps.layers = self._taps.layers, {}
        return max((float(a.max()) for a, _ in layers.values()), default=None)

    def remove(self) -> None:
        """Take the hooks off (idempotent)."""
        self._taps.__exit__(None, None, None)

    def __enter__(self) -> "AttentionMaxima":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
