"""Directional curvature, preconditioned forms, eigenvector cosines, loss along a direction."""

import math

import pytest
import torch

from forensics.math.directional import (
    cosine, cosine_with_eigenvectors, directional_curvature, loss_along,
    preconditioned_directional_curvature,
)
from forensics.math.hvp import HVPOperator


def _quadratic():
    A = torch.diag(torch.tensor([4.0, 1.0, 0.5], dtype=torch.float64))
    params = {"x": torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)}
    return A, params, (lambda p: 0.5 * p["x"] @ A @ p["x"])


def test_directional_curvature_and_preconditioned():
    A, params, loss = _quadratic()
    op = HVPOperator(loss, params)
    g = op.grad  # = A x = (4, 1, 0.5)
    assert directional_curvature(op, g) == pytest.approx(float(g @ A @ g / (g @ g)))
    p = torch.tensor([2.0, 1.0, 0.25], dtype=torch.float64)
    out = preconditioned_directional_curvature(op, g, p)
    assert out["seed"] == pytest.approx(float((g / p) @ (A @ g) / (g @ g)))
    d = g / p
    assert out["symmetric"] == pytest.approx(float(d @ A @ d / (d @ (p * d))))
    lam_max = float(torch.linalg.eigvals(torch.diag(1 / p) @ A).real.max())
    assert out["symmetric"] <= lam_max + 1e-12
    assert op.num_matvecs == 3
    assert math.isnan(directional_curvature(op, torch.zeros(3, dtype=torch.float64)))


def test_cosines_and_loss_along():
    V = torch.eye(3, dtype=torch.float64)[:, :2]
    d = torch.tensor([3.0, -4.0, 0.0], dtype=torch.float64)
    assert torch.allclose(cosine_with_eigenvectors(d, V), torch.tensor([0.6, 0.8], dtype=torch.float64))
    assert cosine(d, d) == pytest.approx(1.0)
    A, params, loss = _quadratic()
    e = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    vals = loss_along(loss, params, e, [0.0, -1.0, 1.0])
    assert vals.tolist() == pytest.approx([2.75, 0.75, 8.75])
