"""Where the Hessian engines measure, and the Hessian they share (measure/_hessian.py)."""

import torch

from forensics.analyzer.measure._hessian import SharedHessian, hessian_steps
from forensics.analyzer.window import select


def test_hessian_steps_are_the_ones_the_rules_compare():
    avail = [0, 16, 32, 45, 46, 47, 48, 49, 50, 51, 52]
    w = select(avail, onset=48, peak=48, end=50)
    assert hessian_steps(w, 48, w.steps, 4) == (0, 47, 48, 49)  # reference, before, onset, after
    assert hessian_steps(w, 48, w.steps, 2) == (47, 48)
    assert hessian_steps(w, 48, w.steps, 0) == w.steps  # 0: all
    w = select(avail, onset=48, peak=50, end=51)
    assert hessian_steps(w, 50, w.steps, 5) == (0, 47, 48, 50, 51)  # then the peak


class _QuadraticReplay:
    """replay.loss(p, batch) = ½ wᵀAw, A from the batch: H = A everywhere."""

    def loss(self, p, batch):
        return 0.5 * p["w"] @ (batch["A"] @ p["w"])


def test_shared_hessian_makes_an_equal_product_once():
    A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    h = SharedHessian(_QuadraticReplay(), {"w": torch.tensor([1.0, -1.0], dtype=torch.float64)},
                      {"A": A})
    g = torch.tensor([0.5, 2.0], dtype=torch.float64)
    first = h.product(g)
    again = h.product(g.clone())  # equal by value, another tensor
    assert torch.allclose(first, A @ g) and again is first
    assert h.op.num_matvecs == 1
    assert torch.allclose(h.product(torch.tensor([1.0, 0.0], dtype=torch.float64)), A[:, 0])
    assert h.op.num_matvecs == 2
