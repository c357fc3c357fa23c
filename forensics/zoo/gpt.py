"""A small causal transformer (GPT) for sample runs, tests and benches; safe to rebuild from run.json.

Token + learned position embeddings, pre-norm blocks (LayerNorm → causal self-attention by
`F.scaled_dot_product_attention(..., is_causal=True)` → residual; LayerNorm → GELU MLP →
residual), a final LayerNorm and a head tied to the token embedding (one parameter,
`tok.weight`; the head has no bias). Inputs are token ids (B, T) with T ≤ `context`; outputs
are logits (B, T, V). Init as GPT-2: N(0, 0.02) weights, zero biases.

Options (factory kwargs; the defaults are the model above, bit for bit):
- `attention="explicit"`: softmax(q·kᵀ/√d + causal mask)·v written out, the logits passing
  through a `QKLogits` module so hooks see them (`forensics.record.attention_taps`);
- `qk_norm=True`: LayerNorm over each head's queries and keys before the dot product
  (Dehghani et al. 2023, arXiv 2302.05442; Wortsman et al. 2023, arXiv 2309.14322), the fix for
  attention-logit growth;
- `next_token_z_loss`: the next-token loss plus PaLM's z-loss 1e-4·log²Z (Chowdhery et al.
  2022, arXiv 2204.02311), the fix for output-logit divergence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from forensics.rundir.model import trusted


ATTENTION = ("sdpa", "explicit")
Z_LOSS_WEIGHT = 1e-4  # PaLM's z-loss coefficient (Chowdhery et al. 2022, arXiv 2204.02311)


class QKLogits(nn.Module):
    """q·kᵀ/√d for q, k (B, h, T, d/h) -> (B, h, T, T), in the open: its output is what attention
    taps read as the layer's pre-softmax logits (before the causal mask)."""

    exposes_attention_logits = True
    causal = True

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The logits q·kᵀ/√d (B, h, T, T) for q, k (B, h, T, d)."""
        return (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)); (B, T, d) -> (B, T, d).

    `attention`: "sdpa" (the fused kernel) or "explicit" (logits through `QKLogits`); `qk_norm`:
    LayerNorm(d/h) on queries and keys. ValueError for an unknown `attention` or a width that
    is not a multiple of `heads`.
    """

    def __init__(self, d_model: int, heads: int, mlp_ratio: int = 4, attention: str = "sdpa",
                 qk_norm: bool = False):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not a multiple of heads {heads}")
        if attention not in ATTENTION:
            raise ValueError(f"attention {attention!r} is not one of {ATTENTION}")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.fc = nn.Linear(d_model, mlp_ratio * d_model)
        self.out = nn.Linear(mlp_ratio * d_model, d_model)
        if qk_norm:  # 1-D weights: the GPT's N(0, 0.02) init leaves them at ones/zeros
            self.q_norm, self.k_norm = nn.LayerNorm(d_model // heads), nn.LayerNorm(d_model // heads)
        if attention == "explicit":
            self.logits = QKLogits()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block on hidden states x (B, T, d); causal: position t reads positions ≤ t."""
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)                       # 3 × (B, T, d)
        q, k, v = (t.view(B, T, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if hasattr(self, "logits"):
            s = self.logits(q, k)                                              # (B, h, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            a = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)        # (B, h, T, d/h)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """Causal language model: logits (B, T, vocab) for token ids (B, T), T ≤ context."""

    def __init__(self, vocab: int, context: int, d_model: int = 64, layers: int = 2,
                 heads: int = 4, mlp_ratio: int = 4, attention: str = "sdpa", qk_norm: bool = False):
        super().__init__()
        self.context = int(context)
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, mlp_ratio, attention, qk_norm)
                                    for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.tok.weight                                     # tied
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for token ids `idx` (B, T); ValueError when T exceeds the context."""
        T = idx.shape[-1]
        if T > self.context:
            raise ValueError(f"sequence of {T} tokens is longer than the context {self.context}")
        h = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))


@trusted
def gpt(vocab: int, context: int, d_model: int = 64, layers: int = 2, heads: int = 4,
        mlp_ratio: int = 4, attention: str = "sdpa", qk_norm: bool = False) -> GPT:
    """Factory for :class:`GPT` (``forensics.zoo.gpt:gpt``): its sizes, the attention kernel
    ("sdpa" or "explicit") and qk-layernorm; the defaults are the original model."""
    return GPT(vocab, context, d_model=d_model, layers=layers, heads=heads, mlp_ratio=mlp_ratio,
               attention=attention, qk_norm=qk_norm)


@trusted
def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) against targets (B, T) already shifted (the token
    after each position), over the targets that are not −100 (ignored, e.g. padding)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=-100)


@trusted
def next_token_z_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`next_token_loss` plus PaLM's z-loss, Z_LOSS_WEIGHT · mean log²Z over the counted tokens
    (log Z = logsumexp of a position's logits): it pulls log Z to 0, so the logits stay
    log-probabilities (Chowdhery et al. 2022, arXiv 2204.02311)."""
    flat, t = logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
    keep = t != -100
    z = torch.logsumexp(flat[keep], dim=-1)
    return F.cross_entropy(flat, t, ignore_index=-100) + Z_LOSS_WEIGHT * z.square().mean()


def walks(n: int, vocab: int, context: int, *, seed: int = 0) -> torch.Tensor:
    """n token sequences of length context + 1: x_t = (start + stride·t) mod vocab, stride in
    {1, 2, 3} per sequence (learnable in context). Inputs are [:, :-1], targets [:, 1:]."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    stride = torch.randint(1, 4, (n, 1), generator=g)
    return (start + stride * torch.arange(context + 1)) % vocab
