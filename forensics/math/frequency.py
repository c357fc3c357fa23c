"""Frequency split of residuals (F-Principle): low vs high frequency error, per step and per band.

Xu et al. 2019/2020 ("Frequency Principle: Fourier analysis sheds light on generalization of
deep neural networks"): networks fit low frequencies first; seed 000 says a spike's rapid
descent is dominated by low frequencies. Two measurements:

- on a 1-D uniform grid, the exact DFT: energy of the residual at |k| ≤ k0 vs above;
- in general, the filtering method: G^δ(x_i − x_j) = exp(−‖x_i − x_j‖²/(2δ)),
  y^low = (Σ_j y_j G^δ_ij)/(Σ_j G^δ_ij), y^high = y − y^low, same for the output h;
  e_low = ‖y^low − h^low‖/‖y^low‖, e_high = ‖y^high − h^high‖/‖y^high‖. O(n²) memory and time,
  so the batch is subsampled (seeded) and the size reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["dft_split", "gaussian_low_pass", "filtered_errors", "delta_sweep", "band_energies",
           "recovery_steps"]


def dft_split(residual: Tensor, k0: int) -> dict[str, float]:
    """Low/high energy of a residual sampled on a 1-D uniform grid (last dim), split at |k| ≤ k0.

    Energies are Σ|r̂_k|²/n over the bands (Parseval: they add up to ‖r‖²); shares are fractions.
    Leading dims (e.g. outputs) are summed over.
    """
    r = residual.detach().double()
    n = r.shape[-1]
    spec = torch.fft.fft(r, dim=-1).abs().pow(2) / n
    k = (torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64).abs()).to(r.device)
    low = float(spec[..., k <= k0].sum())
    high = float(spec[..., k > k0].sum())
    total = low + high
    return {"low": low, "high": high, "low_share": low / total if total > 0 else float("nan"),
            "high_share": high / total if total > 0 else float("nan")}


def _subsample(n: int, max_samples: int | None, seed: int) -> Tensor | None:
    if max_samples is None or n <= max_samples:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_samples].sort().values


def gaussian_low_pass(x: Tensor, y: Tensor, delta: float) -> Tensor:
    """y^low_i = Σ_j y_j G_ij / Σ_j G_ij with G_ij = exp(−‖x_i − x_j‖²/(2δ)); x (n, d), y (n, …)."""
    xx = x.detach().double().reshape(x.shape[0], -1)
    d2 = torch.cdist(xx, xx).pow(2)
    G = torch.exp(-d2 / (2 * delta))
    yy = y.detach().double().reshape(y.shape[0], -1)
    return ((G @ yy) / G.sum(1, keepdim=True)).reshape(y.shape)


def filtered_errors(x: Tensor, y: Tensor, h: Tensor, delta: float, *,
                    max_samples: int | None = 2048, seed: int = 0) -> dict[str, float]:
    """e_low, e_high of output ``h`` against target ``y`` at filter width δ (Xu et al. filtering).

    Returns ``e_low``, ``e_high``, the low/high parts' share of ‖y − h‖² (``low_share``),
    ``n`` (samples used) and ``n_total``.
    """
    n_total = x.shape[0]
    idx = _subsample(n_total, max_samples, seed)
    if idx is not None:
        x, y, h = x[idx], y[idx], h[idx]
    y, h = y.detach().double(), h.detach().double().reshape(y.shape)
    y_low, h_low = gaussian_low_pass(x, y, delta), gaussian_low_pass(x, h, delta)
    y_high, h_high = y - y_low, h - h_low
    nan = float("nan")
    e_low = float((y_low - h_low).norm() / y_low.norm()) if float(y_low.norm()) > 0 else nan
    e_high = float((y_high - h_high).norm() / y_high.norm()) if float(y_high.norm()) > 0 else nan
    r_low, r_high = float((y_low - h_low).pow(2).sum()), float((y_high - h_high).pow(2).sum())
    tot = r_low + r_high
    return {"e_low": e_low, "e_high": e_high, "low_share": r_low / tot if tot > 0 else nan,
            "n": float(x.shape[0]), "n_total": float(n_total), "delta": float(delta)}


def delta_sweep(x: Tensor, y: Tensor, h: Tensor, deltas: Sequence[float], *,
                max_samples: int | None = 2048, seed: int = 0) -> list[dict[str, float]]:
    """:func:`filtered_errors` for each δ (same subsample), to pick a δ or report all."""
    return [filtered_errors(x, y, h, d, max_samples=max_samples, seed=seed) for d in deltas]


def band_energies(residuals: Tensor, *, k0: int | None = None, x: Tensor | None = None,
                  delta: float | None = None) -> Tensor:
    """(T, 2) low/high energy per step of residual vectors ``residuals`` (T, n[, c]).

    Either ``k0`` (1-D uniform grid, DFT over the n axis) or ``x`` (n, d) with ``delta``
    (Gaussian low-pass); energies are mean squares, ‖r^band‖²/n, so low + high = ‖r‖²/n for the
    DFT (the Gaussian split is not orthogonal, so there the sum can differ slightly).
    """
    r = residuals.detach().double()
    T, n = r.shape[0], r.shape[1]
    out = torch.zeros(T, 2, dtype=torch.float64)
    if k0 is not None:
        rr = r.movedim(1, -1)  # (T, [c,] n)
        for t in range(T):
            s = dft_split(rr[t], k0)
            out[t, 0], out[t, 1] = s["low"] / n, s["high"] / n
        return out
    if x is None or delta is None:
        raise ValueError("pass k0 (1-D grid) or x and delta (Gaussian filter)")
    xx = x.detach().double().reshape(n, -1)
    G = torch.exp(-torch.cdist(xx, xx).pow(2) / (2 * delta))
    G = G / G.sum(1, keepdim=True)
    for t in range(T):
        rt = r[t].reshape(n, -1)
        low = G @ rt
        out[t, 0], out[t, 1] = float(low.pow(2).sum()) / n, float((rt - low).pow(2).sum()) / n
    return out


def recovery_steps(band_errors: Tensor, *, peak: int, baseline_end: int,
                   factor: float = 2.0) -> list[int | None]:
    """Per band: steps after ``peak`` until the band's error is back within ``factor`` × its
    pre-spike level (median over rows [0, baseline_end)); None if it never comes back.

    ``band_errors`` is (T, B), e.g. from :func:`band_energies` over the steps of a spike window.
    Comparing the low and high band answers which frequency recovers first.
    """
    if not 0 < baseline_end <= peak < band_errors.shape[0]:
        raise ValueError("need 0 < baseline_end <= peak < T")
    e = band_errors.detach().double()
    base = e[:baseline_end].median(dim=0).values
    out: list[int | None] = []
    for b in range(e.shape[1]):
        back = (e[peak:, b] <= factor * base[b]).nonzero()
        out.append(int(back[0]) if back.numel() else None)
    return out
