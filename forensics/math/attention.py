"""Attention and output logits: the numbers behind the two transformer instabilities.

Attention-logit growth (Dehghani et al. 2023, "Scaling Vision Transformers to 22 Billion
Parameters", arXiv 2302.05442; Wortsman et al. 2023, "Small-scale proxies for large-scale
Transformer training instabilities", arXiv 2309.14322): the logits q·kᵀ/√d of a head grow until
its softmax is one-hot (entropy → 0). Output-logit divergence (Wortsman et al. 2023; Chowdhery
et al. 2022, "PaLM", arXiv 2204.02311): the output logits drift away from log-probabilities and
log Z = logsumexp over the vocabulary moves far from 0.

Pure tensor computation, no I/O: the engines (`forensics.analyzer.measure.attention`,
`...logits`) and the recorder's per-step columns call these.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["split_heads", "attention_logits", "head_stats", "output_logit_stats", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # the targets F.cross_entropy ignores by default (padding)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, T, h·d) -> (B, h, T, d). ValueError when the width is not a multiple of `heads`."""
    B, T, width = x.shape
    if width % heads:
        raise ValueError(f"width {width} is not a multiple of {heads} heads")
    return x.reshape(B, T, heads, width // heads).transpose(1, 2)


def attention_logits(q: Tensor, k: Tensor, scale: float | None = None) -> Tensor:
    """The pre-softmax attention logits q·kᵀ·scale, (..., T, S), for q (..., T, d) and k (..., S, d).

    `scale` defaults to 1/√d (the scaled dot product of Vaswani et al. 2017, and the default of
    `F.scaled_dot_product_attention`). Computed in at least float32.
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) * scale


def _allowed(T: int, S: int, causal: bool, mask: Tensor | None, device) -> Tensor | None:
    """Boolean (…, T, S) of the key positions a query may attend to, or None for all."""
    allowed = None
    if causal:
        allowed = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)
    if mask is not None:
        m = mask if mask.dtype == torch.bool else torch.isfinite(mask) & (mask > -1e4)
        allowed = m if allowed is None else allowed & m
    return allowed


def head_stats(logits: Tensor, *, causal: bool = False, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per head: the max |logit| over the attended positions and the mean attention entropy.

    logits: (B, h, T, S) pre-softmax (as from `attention_logits`); `causal`: query t attends to
    keys ≤ t (+ S − T); `mask`: boolean (True = may attend) or additive float (−inf / very
    negative = masked), broadcastable to (B, h, T, S). Returns two (h,) float tensors: max |logit|
    (logit units) and the entropy −Σ p log p of each query's attention, in nats, averaged over the
    batch's queries (a one-hot head has 0; a uniform one over S keys has log S). Queries with no
    allowed key are left out. A float mask is also added to the logits before the softmax.
    ValueError for logits that are not 4-D.
    """
    if logits.dim() != 4:
        raise ValueError(f"attention logits must be (B, h, T, S), got shape {tuple(logits.shape)}")
    B, h, T, S = logits.shape
    x = logits.float()
    allowed = _allowed(T, S, causal, mask, x.device)
    if allowed is None:
        allowed = torch.ones(T, S, dtype=torch.bool, device=x.device)
    allowed = allowed.expand(B, h, T, S)
    if mask is not None and mask.dtype != torch.bool:
        x = x + torch.where(allowed, mask.float().expand_as(x).nan_to_num(0.0, 0.0, 0.0), 0.0)
    absmax = torch.where(allowed, x.abs(), torch.zeros((), device=x.device)).amax(dim=(0, 2, 3))
    masked = x.masked_fill(~allowed, float("-inf"))
    logp = torch.log_softmax(masked, dim=-1)
    p = logp.exp()
    ent = -(torch.where(allowed, p * logp, torch.zeros((), device=x.device))).sum(-1)  # (B, h, T)
    rows = allowed.any(-1)  # queries with at least one key
    count = rows.sum(dim=(0, 2)).clamp_min(1)
    entropy = torch.where(rows, ent, torch.zeros((), device=x.device)).sum(dim=(0, 2)) / count
    return absmax, entropy


def output_logit_stats(logits: Tensor, targets: Tensor | None = None,
                       ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """Max and mean output logit and log Z over the tokens a language-model loss counts.

    logits: (..., V) scores over a vocabulary of V; targets: integer (...) with `ignore_index`
    at the tokens the loss leaves out (padding), or None to count every position. log Z =
    logsumexp over V per token (0 when the logits are log-probabilities). Returns, in logit units
    (nats for log Z): `logit_max` (largest logit), `logit_mean` (mean over tokens and
    vocabulary), `log_z_mean`, `log_z_max`, `log_z_min`, `log_z_sq_mean` (mean of log²Z, the
    PaLM z-loss without its weight) and `tokens` (how many were counted). With no counted token
    every value is NaN and `tokens` is 0. Computed in float32 at least.
    """
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    flat = flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat
    if targets is not None:
        keep = targets.reshape(-1) != ignore_index
        if keep.numel() != flat.shape[0]:
            raise ValueError(f"targets of {keep.numel()} tokens for logits of {flat.shape[0]} positions")
        flat = flat[keep]
    if flat.shape[0] == 0:
        nan = float("nan")
        return {"logit_max": nan, "logit_mean": nan, "log_z_mean": nan, "log_z_max": nan,
                "log_z_min": nan, "log_z_sq_mean": nan, "tokens": 0}
    log_z = torch.logsumexp(flat, dim=-1)
    return {"logit_max": float(flat.max()), "logit_mean": float(flat.mean()),
            "log_z_mean": float(log_z.mean()), "log_z_max": float(log_z.max()),
            "log_z_min": float(log_z.min()), "log_z_sq_mean": float(log_z.square().mean()),
            "tokens": int(flat.shape[0])}
