"""The one NaN-safe JSON conversion: every JSON file, event, finding and printed row goes through it.

JSON has no NaN or infinity, so a non-finite float becomes the string Python's `repr` gives it
("nan", "inf", "-inf"), the form docs/format.md promises readers of run.json, events.jsonl,
snapshot metadata and findings. numpy scalars and arrays and torch tensors become plain numbers
and lists, so `json.dumps(..., allow_nan=False)` of the result never fails.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any, Callable


def jsonsafe(value: Any, *, fallback: Callable[[Any], str] = repr) -> Any:
    """A plain JSON value (None, bool, int, finite float, str, list, dict with str keys) for `value`.

    Args:
        value: anything; containers (dict, list, tuple, set) are converted recursively, dict
            keys with `str`.
        fallback: how a value of any other type becomes a string; `repr` (the default) keeps
            its type visible in the record, `str` prints a date or a decimal as a person reads it.

    Returns:
        Non-finite floats (Python, numpy, or 0-d tensors) as "nan", "inf" or "-inf"; numpy
        integers as int; numpy booleans as bool; numpy arrays and tensors of any shape as
        (nested) lists via `tolist()`; everything else `fallback(value)`.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):  # int and numpy integers (bool was caught above)
        return int(value)
    if isinstance(value, numbers.Real):  # float and numpy floats
        v = float(value)
        return v if math.isfinite(v) else repr(v)
    if isinstance(value, dict):
        return {str(k): jsonsafe(v, fallback=fallback) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonsafe(v, fallback=fallback) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "ndim"):  # numpy arrays and scalars, torch tensors
        return jsonsafe(value.detach().tolist() if hasattr(value, "detach") else value.tolist(),
                        fallback=fallback)
    return fallback(value)


def dumps(value: Any, *, fallback: Callable[[Any], str] = repr, **kwargs: Any) -> str:
    """`json.dumps` of `jsonsafe(value, fallback=fallback)`, which never holds NaN or Infinity.

    Strict JSON readers refuse those tokens. Other keyword arguments go to `json.dumps`
    (indent, sort_keys, ensure_ascii, ...).
    """
    return json.dumps(jsonsafe(value, fallback=fallback), allow_nan=False, **kwargs)
