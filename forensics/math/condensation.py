"""Condensation of first-layer neurons: how many distinct input directions the weights use.

For each first-layer neuron k, ŵ_k = [w_k; b_k]/‖[w_k; b_k]‖ and C = ŴŴᵀ (cosine similarities).
Condensed networks have groups of neurons pointing the same (or opposite) way (Luo, Xu, Ma,
Zhang 2021, "Phase diagram for two-layer ReLU neural networks at infinite-width limit"; Zhou et
al. 2022, "Towards understanding the condensation of neural networks at initial training";
seed 000). Indices: λ_max(C)/m — 1 when all neurons are (anti)parallel, ≈ (1 + √(m/d))²/m for m random
directions in d dimensions (Marchenko–Pastur edge) — and the share of pairs i < j with
|C_ij| > threshold.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["neuron_directions", "cosine_matrix", "condensation_index"]


def neuron_directions(weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Ŵ (m, d[+1]): rows [w_k; b_k] normalised to unit length (zero rows stay zero)."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be (m, d), got {tuple(weight.shape)}")
    w = weight.detach().double()
    if bias is not None:
        w = torch.cat([w, bias.detach().double().reshape(-1, 1)], dim=1)
    norms = w.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, w / norms.clamp_min(1e-300), torch.zeros_like(w))


def cosine_matrix(weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """C = ŴŴᵀ, the (m, m) cosine similarity of neuron input vectors (float64)."""
    W = neuron_directions(weight, bias)
    return W @ W.T


def condensation_index(weight: Tensor, bias: Tensor | None = None, *,
                       threshold: float = 0.95) -> dict[str, float]:
    """Condensation indices of a first layer (``weight`` (m, d), ``bias`` (m,)).

    Returns ``lambda_max_ratio`` = λ_max(C)/m (= σ_max(Ŵ)²/m), ``share_aligned`` = share of
    pairs i < j with |C_ij| > ``threshold``, ``m`` and ``threshold``. Compare before vs after a
    spike: condensation shows as both rising.
    """
    W = neuron_directions(weight, bias)
    m = W.shape[0]
    lam = float(torch.linalg.svdvals(W)[0] ** 2) if m else float("nan")
    if m > 1:
        C = W @ W.T
        iu = torch.triu_indices(m, m, offset=1, device=C.device)
        share = float((C[iu[0], iu[1]].abs() > threshold).double().mean())
    else:
        share = float("nan")
    return {"lambda_max_ratio": lam / m if m else float("nan"), "share_aligned": share,
            "m": float(m), "threshold": threshold}
