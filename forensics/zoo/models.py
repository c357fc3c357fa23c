"""Small models for the sample runs; each factory is importable by path so the analyzer can rebuild it."""

import math

import torch
from torch import nn

from forensics.rundir.model import trusted

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


@trusted
def mlp(sizes: list[int], activation: str = "tanh", bias: bool = True) -> nn.Sequential:
    """A plain fully connected net, e.g. ``mlp([1, 32, 32, 1])``; PyTorch's default init.

    Parameter names are those of ``nn.Sequential`` (``0.weight``, ``0.bias``, ``2.weight`` ...).
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(_ACTIVATIONS)}")
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least input and output sizes, got {sizes}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class TwoLayer(nn.Module):
    """f(x) = v . act(W x / sqrt(d)) / sqrt(width): a two-layer net in NTK parameterisation.

    Weights are N(0, 1) at init (Lee et al. 2019; Zhu et al. use this net for catapults), so the
    tangent kernel has an O(1) scale independent of the width and eta_crit is O(1).
    """

    def __init__(self, width: int, d: int, activation: str = "relu", out: int = 1):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
        self.width, self.d = int(width), int(d)
        self.weight = nn.Parameter(torch.randn(self.width, self.d))       # (m, d)
        self.head = nn.Parameter(torch.randn(int(out), self.width))       # (out, m)
        self.act = _ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (n, out) for inputs x of shape (n, d)."""
        h = self.act(x @ self.weight.T / math.sqrt(self.d))                # (n, m)
        return h @ self.head.T / math.sqrt(self.width)                     # (n, out)


@trusted
def two_layer(width: int, d: int, activation: str = "relu", out: int = 1) -> TwoLayer:
    """Factory for :class:`TwoLayer` (``forensics.zoo.models:two_layer``)."""
    return TwoLayer(width, d, activation=activation, out=out)
