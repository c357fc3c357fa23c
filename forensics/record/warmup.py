"""The detector's rule before a channel's window exists (its first `min_history` values): the
running-minimum rule, so that a spike is seen from the first steps of a run (or of a resumed run
without history).

With r >= 1 the largest step-to-step change among the values so far that opened no spike (a rise
by f counts f, a fall by f counts f^(1/3): r measures the series' own noise), a series is smooth
once SMOOTH_SEEN (5) such values are known and r^2 < warmup_ratio (a full-batch loss, a probe);
otherwise noisy (a minibatch loss, or too few values to tell). A value above

    level = base x max(warmup_ratio, r^2),   base = lo (smooth) or the median (noisy)

of those values (lo their lowest) is above the warm-up level. A smooth series opens a spike at the
first value above it; a noisy one needs WARMUP_PERSIST (3) values in a row above it and opens at
the third (the running minimum of a noisy series is an extreme draw, so its median is the base).
The spike's baseline is that base; its sub-peak is over below the opening level again.

The trade-off: from the first value on, a smooth loss that doubles (warmup_ratio 2) over its lowest
value is a spike, as the truth of bench/detection.py defines one; a fast initial descent that
wobbles up twofold is flagged too. A noisy loss must top its own scatter (r^2) three times in a
row: a lone outlier batch is not a spike, and a spike in the first steps of a noisy minibatch loss
that does not tower over its scatter is not seen (the probe is the objective there: the first
batch's loss before training is its reference, `forensics.record.detector`).
"""

from __future__ import annotations

import math
import statistics

WARMUP_PERSIST = 3  # a noisy series: values in a row above the level needed to open
SMOOTH_SEEN = 5  # values seen before a series can count as smooth
KEEP = 64  # values kept for the median
FALL_ROOT = 3  # a fall by f counts as noise f^(1/FALL_ROOT): a smooth descent halves, noise drops x100


class Warmup:
    """The warm-up state of one channel: lowest value, largest step-to-step rise, first value, and
    the current streak above the level (values held out of lo/r until the streak breaks)."""

    def __init__(self, ratio: float):
        self.ratio = ratio
        self.lo, self.rise, self.prev, self.first = math.inf, 1.0, None, None
        self.streak, self.held, self.seen, self.values = 0, [], 0, []

    def active(self) -> bool:
        """Whether the rule can fire (it is on and a value has been seen)."""
        return bool(self.ratio) and math.isfinite(self.lo)

    def smooth(self) -> bool:
        return self.seen >= SMOOTH_SEEN and self.rise * self.rise < self.ratio

    def levels(self) -> tuple[float, float, float]:
        """(baseline, opening level, closing level)."""
        base = self.lo if self.smooth() or not self.values else statistics.median(self.values)
        level = base * max(self.ratio, self.rise * self.rise)
        return base, level, level

    def above(self, v: float) -> bool:
        """Whether finite v is above the opening level (no persistence: a re-trigger test)."""
        return self.active() and v > self.levels()[1]

    def fires(self, v: float) -> bool:
        """Feed finite v (not yet pushed); True when it opens a spike (module docstring). A value
        above the level is held out of lo/r; a broken streak gives its values back."""
        if not self.active():
            return False
        if v > self.levels()[1]:
            self.streak += 1
            self.held.append(v)
            return self.streak >= (1 if self.smooth() else WARMUP_PERSIST)
        held, self.streak, self.held = self.held, 0, []
        for x in held:
            self.push(x)
        return False

    def push(self, v: float) -> None:
        """Add a finite value that opened no spike (and is not in a streak)."""
        if self.streak:
            return
        if self.first is None:
            self.first = v
        if self.prev is not None and self.prev > 0 and v > 0:
            self.rise = max(self.rise, v / self.prev, (self.prev / v) ** (1 / FALL_ROOT))
        self.prev, self.seen, self.lo = v, self.seen + 1, min(self.lo, v)
        self.values = (self.values + [v])[-KEEP:]

    def reset_streak(self) -> None:
        self.streak, self.held = 0, []

    def rebase(self, values) -> None:
        """Start over from `values` (an unrecovered episode's tail: the new normal)."""
        self.__init__(self.ratio)
        for v in values:
            self.push(v)

    def state_dict(self) -> dict:
        return {"lo": self.lo, "rise": self.rise, "prev": self.prev, "first": self.first,
                "streak": self.streak, "held": list(self.held), "seen": self.seen, "values": list(self.values)}

    def load_state_dict(self, d: dict) -> None:
        """Restore `state_dict`'s output; a state of the older first-losses rule ({"ref": [...]})
        is rebuilt from its reference values."""
        self.__init__(self.ratio)
        if "ref" in d:
            for v in d["ref"]:
                self.push(v)
            return
        self.lo, self.rise, self.prev, self.first = d["lo"], d["rise"], d["prev"], d.get("first")
        self.streak, self.held, self.seen = d.get("streak", 0), list(d.get("held", [])), d.get("seen", 0)
        self.values = list(d.get("values", []))


__all__ = ["WARMUP_PERSIST", "Warmup"]
