"""AGOP, frequency split and condensation against known answers."""

import math

import pytest
import torch

from forensics.math.agop import agop, agop_alignment, true_agop
from forensics.math.condensation import condensation_index, cosine_matrix
from forensics.math.frequency import (
    band_energies, delta_sweep, dft_split, filtered_errors, gaussian_low_pass, recovery_steps,
)


def test_agop_of_x1x2_matches_analytic():
    torch.manual_seed(0)
    x = torch.randn(20000, 5, dtype=torch.float64)
    G = agop(lambda z: z[:, 0] * z[:, 1], x)
    G_star = true_agop("x1x2", 5, dtype=torch.float64)
    assert torch.allclose(G, G_star, atol=0.05)
    assert agop_alignment(G, G_star) > 0.999
    assert agop_alignment(G_star, G_star) == pytest.approx(1.0)


def test_agop_of_a_model_computing_x1x2_aligns():
    torch.manual_seed(1)
    x = torch.randn(2000, 4)
    net = torch.nn.Bilinear(4, 4, 1, bias=False)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, 0, 1] = 1.0
    model = lambda z: net(z, z)  # noqa: E731 — computes x1·x2 exactly
    assert agop_alignment(agop(model, x), true_agop("x1x2", 4)) > 0.99
    rand = torch.nn.Linear(4, 1)
    assert agop_alignment(agop(rand, x), true_agop("x1x2", 4)) < 0.95
    G_sin = agop(lambda z: torch.sin(z[:, 0]), torch.randn(20000, 2, dtype=torch.float64))
    assert float(G_sin[0, 0]) == pytest.approx(float(true_agop("sin_x1", 2)[0, 0]), rel=0.03)


def test_dft_split_known_sines():
    n = 256
    t = torch.arange(n, dtype=torch.float64) / n
    low_amp, high_amp = 2.0, 0.5
    r = low_amp * torch.sin(2 * math.pi * 3 * t) + high_amp * torch.sin(2 * math.pi * 40 * t)
    s = dft_split(r, k0=10)
    # a sine of amplitude a has mean square a²/2; energies are Σ|r̂|²/n = ‖r‖²
    assert s["low"] == pytest.approx(n * low_amp**2 / 2)
    assert s["high"] == pytest.approx(n * high_amp**2 / 2)
    assert s["low_share"] == pytest.approx(low_amp**2 / (low_amp**2 + high_amp**2))
    steps = torch.stack([r, 2 * r, 0.1 * r])
    e = band_energies(steps, k0=10)
    assert e[1, 0] == pytest.approx(4 * e[0, 0]) and e[0, 0] == pytest.approx(low_amp**2 / 2)


def test_gaussian_filter_separates_bands():
    n = 400
    x = torch.linspace(0, 1, n, dtype=torch.float64).reshape(n, 1)
    low = torch.sin(2 * math.pi * x[:, 0])
    high = 0.3 * torch.sin(2 * math.pi * 50 * x[:, 0])
    y = low + high
    delta = 0.02 ** 2
    y_low = gaussian_low_pass(x, y, delta)
    inner = slice(40, -40)  # edges are biased by the one-sided kernel
    assert torch.allclose(y_low[inner], low[inner], atol=0.03)
    # an output that has only the low part: small low error, high error ≈ 1
    f = filtered_errors(x, y, low, delta, max_samples=None)
    assert f["e_low"] < 0.05 and f["e_high"] > 0.9 and f["n"] == n
    sub = filtered_errors(x, y, low, delta, max_samples=100)
    assert sub["n"] == 100 and sub["n_total"] == n
    assert len(delta_sweep(x, y, low, [1e-4, 1e-3], max_samples=200)) == 2
    e = band_energies(torch.stack([y - low, y - y]), x=x, delta=delta)
    assert e[0, 1] > 10 * e[0, 0] and float(e[1].abs().sum()) == 0.0


def test_recovery_steps():
    low = torch.tensor([1.0, 1.0, 1.0, 50.0, 10.0, 1.5, 1.0, 1.0])
    high = torch.tensor([1.0, 1.0, 1.0, 50.0, 40.0, 30.0, 5.0, 1.9])
    assert recovery_steps(torch.stack([low, high], 1), peak=3, baseline_end=3) == [2, 4]
    assert recovery_steps(torch.stack([low, high], 1), peak=3, baseline_end=3, factor=1.0) == [3, None]


def test_condensation_indices():
    w = torch.tensor([1.0, 2.0, -1.0]).repeat(10, 1)
    b = torch.full((10,), 0.5)
    idx = condensation_index(w * torch.arange(1, 11.0).reshape(-1, 1), b * torch.arange(1, 11.0))
    assert idx["lambda_max_ratio"] == pytest.approx(1.0) and idx["share_aligned"] == 1.0
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 64))
    orth = condensation_index(q[:32])  # orthonormal rows
    assert orth["lambda_max_ratio"] == pytest.approx(1 / 32) and orth["share_aligned"] == 0.0
    rnd = condensation_index(torch.randn(50, 200), torch.randn(50))
    assert rnd["share_aligned"] < 0.01 and rnd["lambda_max_ratio"] < 0.1
    C = cosine_matrix(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]))
    assert torch.allclose(C.diagonal(), torch.ones(3, dtype=torch.float64)) and C[0, 2] == -1.0
