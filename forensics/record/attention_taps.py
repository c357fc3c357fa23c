"""Taps on a transformer's attention: per layer and head, max |q·kᵀ/√d| and the attention entropy.

Works on any `nn.Module`, by three routes, each layer counted once:
- a module that computes its logits in the open and says so (`exposes_attention_logits = True`,
  its output the (B, h, T, S) pre-softmax logits, `causal` its masking; the zoo GPT's explicit
  attention): a forward hook reads them;
- `nn.MultiheadAttention` (and so `nn.TransformerEncoderLayer`/`DecoderLayer`): a forward hook
  recomputes q and k from the module's input projections and its inputs (the fused kernel never
  shows the logits), with its attn_mask and key_padding_mask;
- every call of `F.scaled_dot_product_attention` (the zoo GPT's default, Hugging Face GPT-2 /
  LLaMA-style models in their "sdpa" implementation): q and k are taken from the call, after
  rotary embeddings or qk-norm, and the logits recomputed (grouped-query heads repeated).
The layer is named by the innermost module running when the attention ran (e.g. `blocks.0`,
`transformer.h.0.attn`, `layers.0.self_attn`). A Hugging Face model in its "eager" attention is
switched to its "sdpa" implementation while tapped (`switch_eager=True`, the analyzer's replays:
the same attention, computed by the kernel the taps see) and switched back on exit. Not seen:
attention written out by hand without a marker — `AttentionTaps.layers` is then empty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from forensics.math.attention import attention_logits, head_stats, split_heads


def _additive(mask, bool_means_allowed: bool):
    """A boolean or additive float mask as an additive float mask (−inf = masked), or None."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        allowed = mask if bool_means_allowed else ~mask
        return torch.zeros(allowed.shape, device=mask.device).masked_fill(~allowed, float("-inf"))
    return mask.float()


def _measured_by_hook(module: nn.Module) -> bool:
    """Whether a module's attention is measured by its own hook (so SDPA calls inside are not)."""
    return isinstance(module, nn.MultiheadAttention) or getattr(module, "exposes_attention_logits", False)


class AttentionTaps:
    """Context manager: while active, every attention of `model` is measured per head.

    `layers` afterwards: layer name -> (max |logit| per head (h,), mean entropy per head (h,)),
    both float tensors on the CPU (max over repeated calls of a layer, entropy of the last).
    Nothing is kept of the logits themselves. Hooks and the patched function are removed on exit,
    also when the forward raised. `grad_only`: forwards run under `torch.no_grad()` (e.g. the
    recorder's probe pass) are not counted.
    """

    def __init__(self, model: nn.Module, *, switch_eager: bool = False, grad_only: bool = False):
        self.model = model
        self.switch_eager = switch_eager
        self.grad_only = grad_only  # count only forwards run with autograd on (training passes)
        self._switched: list = []  # Hugging Face configs switched from "eager" to "sdpa"
        self.layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._stack: list[str] = []
        self._owned = 0  # > 0 while a module measured by its own hook runs
        self._handles: list = []
        self._sdpa = None

    def _off(self) -> bool:
        """Whether this forward is not counted (`grad_only` and autograd is off)."""
        return self.grad_only and not torch.is_grad_enabled()

    def _record(self, layer: str, logits: torch.Tensor, causal: bool, mask) -> None:
        with torch.no_grad():
            absmax, entropy = head_stats(logits.detach(), causal=causal, mask=mask)
        absmax, entropy = absmax.cpu(), entropy.cpu()
        if layer in self.layers:
            absmax = torch.maximum(absmax, self.layers[layer][0])
        self.layers[layer] = (absmax, entropy)

    def _patched(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                 scale=None, **kwargs):
        if not self._owned and query.dim() == 4 and not self._off():
            with torch.no_grad():
                k = key
                if k.shape[-3] != query.shape[-3]:  # grouped-query attention: repeat the kv heads
                    k = k.repeat_interleave(query.shape[-3] // k.shape[-3], dim=-3)
                logits = attention_logits(query.detach(), k.detach(), scale)
            self._record(self._stack[-1] if self._stack else "attention", logits, bool(is_causal),
                         _additive(attn_mask, True))
        return self._sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                          is_causal=is_causal, scale=scale, **kwargs)

    def _mha(self, name: str, module: nn.MultiheadAttention, args, kwargs) -> None:
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs.get("key", query)
        E, h = module.embed_dim, module.num_heads
        with torch.no_grad():
            if module._qkv_same_embed_dim:
                wq, wk = module.in_proj_weight[:E], module.in_proj_weight[E:2 * E]
            else:
                wq, wk = module.q_proj_weight, module.k_proj_weight
            bq = bk = None
            if module.in_proj_bias is not None:
                bq, bk = module.in_proj_bias[:E], module.in_proj_bias[E:2 * E]
            if query.dim() == 2:  # unbatched (L, E)
                query, key = query.unsqueeze(0), key.unsqueeze(0)
            elif not module.batch_first:
                query, key = query.transpose(0, 1), key.transpose(0, 1)
            q = split_heads(F.linear(query, wq, bq), h)
            k = split_heads(F.linear(key, wk, bk), h)
            logits = attention_logits(q, k)
        mask = _additive(kwargs.get("attn_mask", args[4] if len(args) > 4 else None), False)
        pad = _additive(kwargs.get("key_padding_mask", args[3] if len(args) > 3 else None), False)
        if pad is not None:
            pad = pad.reshape(pad.shape[0] if pad.dim() > 1 else 1, 1, 1, -1)
            mask = pad if mask is None else mask + pad
        causal = bool(kwargs.get("is_causal", False)) and mask is None
        self._record(name, logits, causal, mask)

    def __enter__(self) -> "AttentionTaps":
        def push(name):
            def pre(module, args, kwargs=None):
                self._stack.append(name)
                if isinstance(module, nn.MultiheadAttention) and not self._off():
                    self._mha(name, module, args, kwargs or {})
                self._owned += _measured_by_hook(module)
            return pre

        def pop(name):
            def post(module, args, output):
                self._stack.pop()
                self._owned -= _measured_by_hook(module)
                if getattr(module, "exposes_attention_logits", False) and not self._off():
                    causal = bool(getattr(module, "causal", False))
                    self._record(name.rpartition(".")[0] or name, output, causal, None)
            return post

        try:
            for name, module in self.model.named_modules():
                self._handles.append(module.register_forward_pre_hook(push(name), with_kwargs=True))
                self._handles.append(module.register_forward_hook(pop(name)))
            self._sdpa = F.scaled_dot_product_attention
            F.scaled_dot_product_attention = self._patched
            if self.switch_eager:
                self._switch()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _switch(self) -> None:
        """Hugging Face configs in "eager" attention -> "sdpa" (restored by __exit__)."""
        for module in self.model.modules():
            config = getattr(module, "config", None)
            if getattr(config, "_attn_implementation", None) == "eager" and \
                    all(config is not c for c in self._switched):
                config._attn_implementation = "sdpa"
                self._switched.append(config)

    def __exit__(self, *exc) -> None:
        for config in self._switched:
            config._attn_implementation = "eager"
        self._switched.clear()
        if self._sdpa is not None:
            F.scaled_dot_product_attention = self._sdpa
            self._sdpa = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stack.clear()
        self._owned = 0
