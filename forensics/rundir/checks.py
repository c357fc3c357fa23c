"""Small type checks for the JSON of a run (run.json, events.jsonl): one message style, no file.

The caller knows the file (and line) and wraps `Invalid` into a `RunFormatError` naming it.
`bool` is an `int` in Python, so every integer check refuses `True`/`False` explicitly.
"""

from __future__ import annotations

from typing import Any

# JSON has no NaN/Inf: the writers store them as these strings (docs/format.md).
NONFINITE = ("nan", "inf", "-inf")


class Invalid(ValueError):
    """One value of a JSON document has the wrong type; the message names the key, not the file."""


def short(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters (a hostile value can be megabytes long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float that is not a bool, or one of the strings "nan", "inf", "-inf"."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value in NONFINITE


def need(ok: bool, key: str, value: Any, kind: str) -> None:
    """Raise `Invalid("<key> must be <kind>, got <value>")` unless `ok`."""
    if not ok:
        raise Invalid(f"{key} must be {kind}, got {short(value)}")


def _to_check(d: dict, key: str, optional: bool, nullable: bool) -> bool:
    """Whether `d[key]` has a value to check: Invalid when it is absent and not `optional`; False
    when it is absent (optional) or null (`nullable`)."""
    if key not in d:
        need(optional, key, "<missing>", "present")
        return False
    return not (d[key] is None and nullable)


def need_int(d: dict, key: str, *, optional: bool = False, nullable: bool = False,
             minimum: int | None = None) -> None:
    """`d[key]` is an integer (>= `minimum`); absent only when `optional`, null only when `nullable`."""
    if not _to_check(d, key, optional, nullable):
        return
    value = d[key]
    need(is_int(value) and (minimum is None or value >= minimum), key, value,
         "an integer" + (f" >= {minimum}" if minimum is not None else "") + (" or null" if nullable else ""))


def need_number(d: dict, key: str, *, optional: bool = False, nullable: bool = False) -> None:
    """`d[key]` is a number (or "nan"/"inf"/"-inf"); absent only when `optional`, null when `nullable`."""
    if not _to_check(d, key, optional, nullable):
        return
    value = d[key]
    need(is_number(value), key, value, "a number" + (" or null" if nullable else ""))


def need_type(d: dict, key: str, types: type | tuple, kind: str, *, optional: bool = True,
              nullable: bool = False) -> None:
    """`d[key]` is an instance of `types` (described as `kind`); absent only when `optional`."""
    if not _to_check(d, key, optional, nullable):
        return
    value = d[key]
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _tuple(types))
    need(ok, key, value, kind + (" or null" if nullable else ""))


def need_str_map(d: dict, key: str) -> None:
    """`d[key]`, when present, is an object of strings to strings."""
    if key in d and d[key] is not None:
        value = d[key]
        need(isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in value.items()),
             key, value, "an object of strings")


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)
