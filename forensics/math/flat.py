"""Flatten a dict (or sequence) of parameter tensors to one flat vector and back.

The one place the math package converts between named tensors and flat vectors. Unflattening
uses :func:`torch.split` rather than slicing: in torch 2.13, slicing a flat vector inside
``torch.func.jvp(torch.func.grad(...))`` fails with "ZeroTensors are immutable", while
``torch.split`` works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FlatSpec", "flatten", "unflatten"]


@dataclass(frozen=True)
class FlatSpec:
    """Names, shapes and sizes of a parameter dict, in order, to map to and from a flat vector.

    Example:
        >>> spec = FlatSpec.from_params({"w": torch.zeros(2, 3), "b": torch.zeros(2)})
        >>> spec.dim
        8
        >>> spec.unflatten(torch.arange(8.0))["b"].tolist()
        [6.0, 7.0]
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]

    @classmethod
    def from_params(cls, params: Mapping[str, Tensor] | Sequence[Tensor]) -> "FlatSpec":
        """Describe ``params`` (a name -> tensor mapping, or a sequence named "0", "1", ...)."""
        items = _items(params)
        return cls(
            names=tuple(n for n, _ in items),
            shapes=tuple(t.shape for _, t in items),
            numels=tuple(t.numel() for _, t in items),
        )

    @property
    def dim(self) -> int:
        """Total number of scalars."""
        return sum(self.numels)

    def flatten(self, tensors: Mapping[str, Tensor] | Sequence[Tensor]) -> Tensor:
        """Concatenate the tensors (in this spec's order) into one 1-D vector."""
        if isinstance(tensors, Mapping):
            parts = [tensors[n] for n in self.names]
        else:
            parts = list(tensors)
        if len(parts) != len(self.names):
            raise ValueError(f"expected {len(self.names)} tensors, got {len(parts)}")
        return torch.cat([p.reshape(-1) for p in parts])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a flat vector of length ``dim`` back into named tensors (views, no copy)."""
        if flat.dim() != 1 or flat.numel() != self.dim:
            raise ValueError(f"expected a flat vector of {self.dim} elements, got {tuple(flat.shape)}")
        parts = torch.split(flat, list(self.numels))
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def split(self, flat: Tensor) -> tuple[Tensor, ...]:
        """Like :meth:`unflatten` but as a tuple in order."""
        return tuple(self.unflatten(flat).values())


def flatten(tensors: Mapping[str, Tensor] | Sequence[Tensor]) -> Tensor:
    """Concatenate tensors (mapping values in insertion order, or a sequence) into one vector."""
    return FlatSpec.from_params(tensors).flatten(tensors)


def unflatten(flat: Tensor, like: Mapping[str, Tensor] | Sequence[Tensor]) -> dict[str, Tensor]:
    """Split ``flat`` into tensors shaped and named like ``like``."""
    return FlatSpec.from_params(like).unflatten(flat)


def _items(params: Mapping[str, Tensor] | Sequence[Tensor]) -> list[tuple[str, Tensor]]:
    if isinstance(params, Mapping):
        return list(params.items())
    return [(str(i), t) for i, t in enumerate(params)]
