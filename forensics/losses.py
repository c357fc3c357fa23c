"""Resolve the loss named in run.json ("mse", "cross_entropy" or an import path) to a callable."""

from __future__ import annotations

from typing import Callable


def resolve_loss(spec: str, *, allow_import: bool = False) -> Callable:
    """`(output, target) -> scalar loss` for `spec`.

    "mse" is `F.mse_loss` with mean reduction, "cross_entropy" is `F.cross_entropy` (mean);
    anything else is `"package.module:callable"`, imported only if `allow_import` or it lives
    under `forensics.zoo` (see `forensics.rundir.model.import_callable`).
    """
    import torch.nn.functional as F

    if spec == "mse":
        return F.mse_loss
    if spec == "cross_entropy":
        return F.cross_entropy
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"unknown loss {spec!r}: use 'mse', 'cross_entropy' or 'package.module:callable'")
    from forensics.rundir.model import import_callable

    return import_callable(spec, allow_import=allow_import, what="loss")
