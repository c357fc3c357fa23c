"""Robust local trend of a short series: where the next value of log L should be and how far it may
stray (the default `robust` detector preset's fit, forensics.record.presets). Pure numpy.

On y_1..y_n (log losses, oldest first), h = n // 2:

    b   = (med y_{n-h+1..n} - med y_{1..h}) / (n - h)     two-halves median slope, kept only when
                                                          the Mann-Kendall test gives |z_MK| >= 2
    a0  = med_i (y_i + b (n + 1 - i))                     the trend one position past the window
    a   = max(a0, min(y_{n-recent+1..n}))                 never under the last values (a knee)
    s0  = max(1.4826 med_i |y_i + b (n + 1 - i) - a0|,    residual spread about the trend
              1.4826 MAD(y_{i+1} - y_i) / sqrt 2,         step-to-step noise
              floor)
    s   = s0 sqrt((1 + 16/n) / (1 + 16/window))           a filling window's spread is less sure

Why the test, the step-to-step floor and the inflation: on a 16-value window a two-halves slope
fitted to noise, and the residual spread about it, are often far off (a stationary minibatch loss
was extrapolated under its median and its residual spread came out at a fifth of its scatter:
z = 18 for an ordinary x1.8 batch). The trend test drops a slope the window cannot tell from
noise; the step-to-step spread (von Neumann's mean square successive difference, blind to a linear
trend) floors a lucky small residual spread; the inflation makes the upper tail of z on a filling
window (n = 16..63) match a full window's on stationary noise (measured on log-normal noise: the
99.9th percentile of z is 3.2-3.4 at every n, against 4.0-5.1 at n = 16..24 without it).
"""

from __future__ import annotations

import math

import numpy as np

TREND_Z = 2.0  # the slope is kept only when the Mann-Kendall |z| reaches this
SMALL_WINDOW = 16.0  # spread inflation sqrt((1 + 16/n) / (1 + 16/window)) while the window fills


def mann_kendall_z(y: np.ndarray) -> float:
    """Mann-Kendall trend statistic of the 1-D series y (n >= 2): S = sum over i < j of
    sign(y_j - y_i), z = S / sqrt(n (n - 1) (2n + 5) / 18) (ties count 0, no tie correction). About
    N(0, 1) when there is no trend; positive for a rising series.
    Mann, "Nonparametric tests against trend", Econometrica 1945; Kendall, "Rank Correlation
    Methods", 1975."""
    n = len(y)
    if n < 2:
        raise ValueError(f"mann_kendall_z needs at least 2 values, got {n}")
    s = float(np.sign(y[None, :] - y[:, None])[np.triu_indices(n, 1)].sum())
    return s / math.sqrt(n * (n - 1) * (2 * n + 5) / 18)


def trend_center_scale(y: np.ndarray, *, window: int, floor: float, recent: int = 8) -> tuple[float, float]:
    """(a, s) of the module docstring for the float64 series y (1-D, n >= 1, oldest first): the
    predicted next value and the spread it is judged by (both in y's units). `window` is the size the
    window fills to (the inflation is 1 once n reaches it), `floor` the smallest spread, `recent` how
    many last values floor the prediction."""
    n = len(y)
    h = n // 2  # older half y[:h], newer half y[n-h:]
    slope = float(np.median(y[n - h:]) - np.median(y[:h])) / (n - h) if h else 0.0
    if slope != 0.0 and abs(mann_kendall_z(y)) < TREND_Z:
        slope = 0.0  # no trend the window can tell from noise: a fitted one would extrapolate noise
    r = y + slope * np.arange(n, 0, -1)  # each value carried along the trend to position n + 1
    center = float(np.median(r))
    residual = 1.4826 * float(np.median(np.abs(r - center)))
    d = np.diff(y)
    step_noise = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2) if n > 2 else 0.0
    scale = max(residual, step_noise, floor)
    scale *= math.sqrt((1 + SMALL_WINDOW / n) / (1 + SMALL_WINDOW / max(window, n)))
    # never below the lowest of the last few values: a descent flattening into a floor (a knee)
    # would otherwise be extrapolated under the floor and the floor called a spike
    return max(center, float(y[-recent:].min())), scale


__all__ = ["SMALL_WINDOW", "TREND_Z", "mann_kendall_z", "trend_center_scale"]
