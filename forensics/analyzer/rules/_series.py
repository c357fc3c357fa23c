"""Small helpers the rules share to pick values out of a spike's measurement series.

Each takes what a judge is given (an `EvidenceView`, or an `Evidence`) and reads through its
`series`, so the view's check of declared metrics applies."""

from __future__ import annotations

import numpy as np

from forensics.analyzer.evidence import Evidence, EvidenceView
from forensics.analyzer.measure._steps import between

Readable = Evidence | EvidenceView


def window(ev: Readable, metric: str, lo: int | None, hi: int | None):
    """Steps and values of `metric` with lo <= step <= hi (None: unbounded)."""
    return between(*ev.series(metric), lo, hi)


def first(ev: Readable, metric: str, lo: int | None = None, hi: int | None = None):
    """(step, value) of the earliest finite measurement in the window, or None."""
    steps, values = window(ev, metric, lo, hi)
    ok = np.isfinite(values)
    if not ok.any():
        return None
    i = int(np.argmax(ok))
    return int(steps[i]), float(values[i])


def last(ev: Readable, metric: str, lo: int | None = None, hi: int | None = None):
    """(step, value) of the latest finite measurement in the window, or None."""
    steps, values = window(ev, metric, lo, hi)
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size == 0:
        return None
    i = int(ok[-1])
    return int(steps[i]), float(values[i])


def peak_value(ev: Readable, metric: str, lo: int | None = None, hi: int | None = None):
    """(step, value) of the largest finite measurement in the window, or None."""
    steps, values = window(ev, metric, lo, hi)
    ok = np.isfinite(values)
    if not ok.any():
        return None
    i = int(np.argmax(np.where(ok, values, -np.inf)))
    return int(steps[i]), float(values[i])


def clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))
