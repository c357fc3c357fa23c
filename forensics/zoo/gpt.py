"""A small causal transformer (GPT) for sample runs, tests and benches; safe to rebuild from run.json.

Token + learned position embeddings, pre-norm blocks (LayerNorm → causal self-attention by
`F.scaled_dot_product_attention(..., is_causal=True)` → residual; LayerNorm → GELU MLP →
residual), a final LayerNorm and a head tied to the token embedding (one parameter,
`tok.weight`; the head has no bias). Inputs are token ids (B, T) with T ≤ `context`; outputs
are logits (B, T, V). Init as GPT-2: N(0, 0.02) weights, zero biases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from forensics.rundir.model import trusted


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)); (B, T, d) -> (B, T, d)."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not a multiple of heads {heads}")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.fc = nn.Linear(d_model, mlp_ratio * d_model)
        self.out = nn.Linear(mlp_ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block on hidden states x (B, T, d); causal: position t reads positions ≤ t."""
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)                       # 3 × (B, T, d)
        q, k, v = (t.view(B, T, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)            # (B, h, T, d/h)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """Causal language model: logits (B, T, vocab) for token ids (B, T), T ≤ context."""

    def __init__(self, vocab: int, context: int, d_model: int = 64, layers: int = 2,
                 heads: int = 4, mlp_ratio: int = 4):
        super().__init__()
        self.context = int(context)
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, mlp_ratio) for _ in range(layers))
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
        mlp_ratio: int = 4) -> GPT:
    """Factory for :class:`GPT` (``forensics.zoo.gpt:gpt``); the arguments are its sizes."""
    return GPT(vocab, context, d_model=d_model, layers=layers, heads=heads, mlp_ratio=mlp_ratio)


@trusted
def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) against targets (B, T) already shifted (the token
    after each position), over the targets that are not −100 (ignored, e.g. padding)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=-100)


def walks(n: int, vocab: int, context: int, *, seed: int = 0) -> torch.Tensor:
    """n token sequences of length context + 1: x_t = (start + stride·t) mod vocab, stride in
    {1, 2, 3} per sequence (learnable in context). Inputs are [:, :-1], targets [:, 1:]."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    stride = torch.randint(1, 4, (n, 1), generator=g)
    return (start + stride * torch.arange(context + 1)) % vocab
