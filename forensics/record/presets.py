"""The detector's opening rules, one small class per preset behind one protocol (`Channel`).

A channel holds the trailing statistics of one watched series (loss or probe) over non-spike
steps and answers three questions: does value v open a spike (`check`), what is the level the
next value is compared against (`baseline`), and below which value is a spike opened against
the (frozen) window over (`close_level`). Presets:

    robust       (default) trend-aware robust z on y = log L over the last n <= `window` non-spike
                 values (spike steps are left out): a = the robust local trend's prediction one step
                 past the window and s its spread (forensics.math.robust_trend: a two-halves median
                 slope kept when the Mann-Kendall test finds a trend, floored at the last 8 values;
                 the spread is the larger of the residuals' and the step-to-step MAD, inflated while
                 the window fills), z = (log L_t - a) / s;
                 opens when z > threshold AND L_t > min_ratio * exp(a) (baseline exp(a)).
    robust_flat  no trend, no floor: z = (log L - median(log L_w)) / (1.4826 MAD(log L_w)).
    zscore       OLMo-core style: (L - mean) / std over the last 128 non-spike steps > 6.
    ratio        Lightning/metaseq style: L >= threshold x the running mean of the window.
    megatron     Megatron style: L > threshold (10) x the largest non-spike loss seen so far.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

import numpy as np

from forensics.math.robust_trend import trend_center_scale
from forensics.record.channel import Channel

_RECENT = 8  # robust: the trend's prediction is floored at the minimum of the window's last _RECENT values


class _Base:
    """Shared bookkeeping: the count, extremes and the window of (log) values."""

    log = False

    def __init__(self, cfg):
        self.cfg = cfg
        self.values: deque = deque()
        self.max_seen, self.min_seen, self.count = -math.inf, math.inf, 0

    def push(self, v: float) -> None:
        """Add a finite non-spike value to the window."""
        self.count += 1
        self.max_seen, self.min_seen = max(self.max_seen, v), min(self.min_seen, v)
        x = math.log(max(v, 1e-30)) if self.log else v
        self.values.append(x)
        self._added(x)
        if len(self.values) > self.cfg.window:
            self._removed(self.values.popleft())

    def _added(self, x: float) -> None:
        pass

    def _removed(self, x: float) -> None:
        pass

    def ready(self) -> bool:
        """Whether the window holds min_history values (the preset's rule applies)."""
        return self.count >= self.cfg.min_history

    def window_max(self) -> float:
        """The highest value of the window (the highest seen, for a preset without one)."""
        if not self.values:
            return self.max_seen
        top = max(self.values)
        return math.exp(top) if self.log else top

    def window_median(self) -> float:
        """The median of the window (the baseline, for a preset without one)."""
        if not self.values:
            return self.baseline()
        med = float(np.median(np.fromiter(self.values, dtype=np.float64)))
        return math.exp(med) if self.log else med

    def state_dict(self) -> dict:
        """JSON-able state (the window, extremes, count)."""
        return {"values": list(self.values), "max_seen": self.max_seen, "min_seen": self.min_seen,
                "count": self.count}

    def load_state_dict(self, d: dict) -> None:
        """Restore `state_dict`'s output (older states lack min_seen: the window's minimum)."""
        self.__init__(self.cfg)
        for x in d["values"]:
            self.values.append(x)
            self._added(x)
        self.max_seen, self.count = d["max_seen"], d["count"]
        lowest = min(self.values, default=math.inf)
        self.min_seen = d.get("min_seen", math.exp(lowest) if self.log and self.values else lowest)


class _Moments(_Base):
    """Running sums of the window (zscore, ratio)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.total = self.total_sq = 0.0

    def _added(self, x):
        self.total += x
        self.total_sq += x * x

    def _removed(self, x):
        self.total -= x
        self.total_sq -= x * x

    def _mean_std(self) -> tuple[float, float]:
        n = len(self.values)
        mean = self.total / n
        return mean, math.sqrt(max(self.total_sq / n - mean * mean, 0.0))

    def baseline(self) -> float:
        return self.total / len(self.values) if self.values else math.nan


class ZScore(_Moments):
    """OLMo-core style z-score of the raw loss."""

    def check(self, v):
        mean, std = self._mean_std()
        std = max(std, 1e-12 * abs(mean), 1e-30)
        score = (v - mean) / std
        return score > self.cfg.threshold and v > self.cfg.min_ratio * mean, score, mean

    def close_level(self, base):
        level = self.cfg.close_ratio * base if math.isfinite(base) else math.inf
        if not self.ready():
            return level
        mean, std = self._mean_std()
        return max(level, mean + self.cfg.close_z * std)


class Ratio(_Moments):
    """Lightning/metaseq style ratio to the running mean."""

    def check(self, v):
        mean = self.total / len(self.values)
        score = v / mean if mean > 0 else 0.0
        return score >= self.cfg.threshold, score, mean

    def close_level(self, base):
        return self.cfg.close_ratio * base if math.isfinite(base) else math.inf


class Megatron(_Base):
    """Megatron style ratio to the largest non-spike value seen (no window)."""

    def push(self, v):
        self.count += 1
        self.max_seen, self.min_seen = max(self.max_seen, v), min(self.min_seen, v)

    def check(self, v):
        base = self.max_seen
        score = v / base if base > 0 else 0.0
        return score > self.cfg.threshold, score, base

    def baseline(self):
        return self.max_seen if self.count else math.nan

    def close_level(self, base):
        return self.cfg.close_ratio * base if math.isfinite(base) else math.inf


class _LogRobust(_Base):
    """Robust z of log L against a centre and spread of the window (subclasses: `_center_scale`)."""

    log = True

    def _center_scale(self) -> tuple[float, float]:
        raise NotImplementedError

    def check(self, v):
        center, scale = self._center_scale()
        base = math.exp(center)
        if v <= self.cfg.min_ratio * base:  # the common case: no z needed
            return False, 0.0, base
        score = (math.log(v) - center) / scale
        return score > self.cfg.threshold, score, base

    def baseline(self):
        return math.exp(self._center_scale()[0]) if self.values else math.nan

    def close_level(self, base):
        level = self.cfg.close_ratio * base if math.isfinite(base) else math.inf
        if not self.ready():
            return level
        center, scale = self._center_scale()
        return max(level, math.exp(center + self.cfg.close_z * scale))


class RobustFlat(_LogRobust):
    """Median and 1.4826 MAD of log L (no trend)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.sorted: list = []

    def _added(self, x):
        bisect.insort(self.sorted, x)

    def _removed(self, x):
        del self.sorted[bisect.bisect_left(self.sorted, x)]

    def _center_scale(self):
        s, n = self.sorted, len(self.sorted)
        center = 0.5 * (s[(n - 1) // 2] + s[n // 2])
        dev = sorted(abs(x - center) for x in s)
        mad = 0.5 * (dev[(n - 1) // 2] + dev[n // 2])
        return center, max(1.4826 * mad, self.cfg.mad_floor)


class Robust(_LogRobust):
    """Two-halves median-slope trend of log L; spread of the residuals about it (module docstring)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self._fit = None  # (center, scale) until the next push

    def _added(self, x):
        self._fit = None

    def _center_scale(self):
        if self._fit is None:
            y = np.fromiter(self.values, dtype=np.float64, count=len(self.values))
            cfg = self.cfg
            self._fit = trend_center_scale(y, window=cfg.window, floor=cfg.mad_floor, recent=_RECENT)
        return self._fit


class RecentMin(_Base):
    """The objective rule (signal="auto" watches the probe with it): a value above objective_ratio x
    the lowest of the last objective_window values opens a spike (baseline: that lowest value), and
    its sub-peak is over below that level again. The probe is a deterministic function of the
    weights (a fixed sample set), so it carries no batch noise; its rises are the objective's. This
    is the definition of a catapult spike in the full loss of small-batch SGD (loss at least doubled
    over its recent minimum; Zhu et al. 2023, arXiv 2306.04815)."""

    MIN_VALUES = 1  # the probe is deterministic in the weights: one value is a reference
    CLOSE_SHARE = 0.8  # closing level / opening level (2x the window minimum at objective_ratio 2.5)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.size = cfg.objective_window

    def push(self, v):
        """Append v to the window of the last `objective_window` values and update the extremes."""
        self.count += 1
        self.max_seen, self.min_seen = max(self.max_seen, v), min(self.min_seen, v)
        self.values.append(v)
        if len(self.values) > self.size:
            self.values.popleft()

    def ready(self):
        """True after MIN_VALUES values."""
        return self.count >= self.MIN_VALUES

    def check(self, v):
        """(v / window minimum > objective_ratio, that ratio, the window minimum)."""
        base = min(self.values)
        score = v / base if base > 0 else 0.0
        return score > self.cfg.objective_ratio, score, base

    def baseline(self):
        """The minimum over the window (nan when empty)."""
        return min(self.values) if self.values else math.nan

    def close_level(self, base):
        """CLOSE_SHARE x objective_ratio x base: the sub-peak is over once the value drops below it
        (hysteresis: a probe hovering about the opening level is one episode, not several)."""
        return self.CLOSE_SHARE * self.cfg.objective_ratio * base if math.isfinite(base) else math.inf


PRESETS: dict[str, type] = {"robust": Robust, "robust_flat": RobustFlat, "zscore": ZScore, "ratio": Ratio,
                            "megatron": Megatron}


def make_channel(cfg) -> Channel:
    """A fresh channel of `cfg.preset` (a `DetectorConfig`)."""
    return PRESETS[cfg.preset](cfg)


__all__ = ["PRESETS", "Channel", "RecentMin", "make_channel"]
