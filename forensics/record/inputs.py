"""What a user hands the recorder, made regular: the batch, the model, the loss, the options.

Batches become the flat `{key: tensor}` a snapshot stores. Tensors are kept as they are; numpy
arrays and numpy/Python numbers become tensors; dicts, lists and tuples are walked, their keys
joined with `SEP` (`{"a": {"b": t}}` -> `"a.b"`, `[{"x": t}]` -> `"0.x"`, a top-level tensor or
sequence gets `"0"`, `"1"`, ...). A list or tuple of
plain numbers becomes one 1-D tensor. `None` entries hold nothing and are skipped; anything else
(strings, arbitrary objects) is dropped and named, so the caller can warn once.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

SEP = "."
_NUMBER = (bool, int, float)


def _is_numpy(v) -> bool:
    return type(v).__module__ == "numpy" and hasattr(v, "dtype")


def _numpy_tensor(v):
    """A numpy array or scalar as a tensor (a copy when the array is read-only); None if not numeric."""
    import numpy as np

    a = np.asarray(v)
    if a.dtype.kind not in "biufc":
        return None
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if a.ndim and a.flags.writeable:
        return torch.from_numpy(a)
    return torch.tensor(a)


def _join(prefix: str, key) -> str:
    return f"{prefix}{SEP}{key}" if prefix else str(key)


def _walk(v, key: str, out: dict, dropped: list) -> None:
    """Add the tensors in `v` to `out` under `key` (joined with SEP when nested); describe what
    cannot be kept in `dropped`."""
    if v is None:
        return
    if isinstance(v, torch.Tensor):
        out[key or "0"] = v
    elif _is_numpy(v):
        _walk_numpy(v, key, out, dropped)
    elif isinstance(v, _NUMBER):
        out[key or "0"] = torch.tensor(v)
    elif isinstance(v, Mapping):
        for k, x in v.items():
            _walk(x, _join(key, k), out, dropped)
    elif isinstance(v, (list, tuple)):
        _walk_sequence(v, key, out, dropped)
    else:
        dropped.append(f"{key or '<batch>'!r} ({type(v).__name__})")


def _walk_numpy(v, key: str, out: dict, dropped: list) -> None:
    """A numpy array or scalar becomes a tensor; a dtype torch cannot hold (strings, objects) is dropped."""
    try:
        t = _numpy_tensor(v)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None:
        dropped.append(f"{key or '<batch>'!r} (numpy {v.dtype})")
    else:
        out[key or "0"] = t


def _walk_sequence(v, key: str, out: dict, dropped: list) -> None:
    """A list/tuple of numbers becomes one 1-D tensor, one of strings is dropped, anything else is
    walked per index."""
    if v and all(isinstance(x, _NUMBER) for x in v):
        out[key or "0"] = torch.tensor(list(v))
    elif v and all(isinstance(x, str) for x in v):
        dropped.append(f"{key or '<batch>'!r} ({type(v).__name__} of str)")
    else:
        for i, x in enumerate(v):
            _walk(x, _join(key, i), out, dropped)


def flatten_batch(batch) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(`{flat key: tensor}`, descriptions of the entries that could not be stored).

    Example: `flatten_batch({"x": np.ones(2), "m": {"w": t}, "s": "a"})` ->
    `({"x": tensor([1., 1.], dtype=float64), "m.w": t}, ["'s' (str)"])`.
    """
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    _walk(batch, "", out, dropped)
    return out, dropped


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside `torch.compile`'s wrapper (whose parameter names all start with `_orig_mod.`);
    the recorded names must be those of the model a factory rebuilds."""
    for _ in range(8):
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    return model


def loss_spec(loss) -> str:
    """run.json's `loss`: a name ("mse", "cross_entropy") or `module:qualname` of a callable;
    ValueError otherwise."""
    if isinstance(loss, str):
        return loss
    if callable(loss) and hasattr(loss, "__module__") and hasattr(loss, "__qualname__"):
        return f"{loss.__module__}:{loss.__qualname__}"
    raise ValueError(f"loss must be 'mse', 'cross_entropy' or 'package.module:callable', got {loss!r}")


def batch_key_map(batch_keys) -> dict:
    """`(input_key, target_key)` or `{"input": ..., "target": ...}` as run.json's `batch_keys`;
    ValueError otherwise."""
    if isinstance(batch_keys, dict):
        return {"input": batch_keys["input"], "target": batch_keys["target"]}
    if isinstance(batch_keys, (tuple, list)) and len(batch_keys) == 2:
        return {"input": str(batch_keys[0]), "target": str(batch_keys[1])}
    raise ValueError(f"batch_keys must be (input_key, target_key), got {batch_keys!r}")


def check_counts(**options) -> None:
    """ValueError naming the first option that is not an int >= its minimum; `name=(value, minimum)`."""
    for name, (v, lo) in options.items():
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


__all__ = ["SEP", "batch_key_map", "check_counts", "flatten_batch", "loss_spec", "unwrap_model"]
