"""The detector's rule before a channel's window exists (its first `min_history` values): the
running-minimum rule, so that a spike is seen from the first steps of a run (or of a resumed run
without history).

Over the values so far that opened no spike: r >= 1 is the largest step-to-step change with a
fall by f counted as f^(1/3) (a smooth descent halving per step stays smooth), c >= 1 the largest
change either way, lo the lowest value, m the median. With q = min(SMOOTH_RATIO (2), warmup_ratio),
a series is smooth once SMOOTH_SEEN (8) such values are known, r^2 < q and its direction (up/down)
turned at most once (a full-batch loss, a probe: runs of descent and ascent); otherwise noisy (a
minibatch loss zigzags, or too few values to tell). The warm-up level is

    smooth: lo x max(q, r^2)        noisy: m x max(warmup_ratio, c^2)

(the running minimum of a noisy series is an extreme draw, so its median is the base). A smooth
series opens a spike at the first value above it; a noisy one needs WARMUP_PERSIST (3) values in a
row above it (4 after a single reference value) and opens at the last of them. A streak that
falls and then rises again is noise, not one spike (a spike rises to its peak, then falls): it is
given back to the reference values and the rising value starts afresh. The spike's baseline is lo
or m; its sub-peak is over below the opening level again.

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
SMOOTH_SEEN = 8  # values seen before a series can count as smooth
SMOOTH_RATIO = 2.0  # a smooth series doubling over its lowest value: the truth's spike (bench/detection.py)
MAX_TURNS = 1  # changes of direction a smooth series may have had
KEEP = 64  # values kept for the median
FALL_ROOT = 3  # a fall by f counts as noise f^(1/FALL_ROOT): a smooth descent halves, noise drops x100


class Warmup:
    """The warm-up state of one channel: lowest value, largest step-to-step rise, first value, and
    the current streak above the level (values held out of lo/r until the streak breaks)."""

    def __init__(self, ratio: float):
        self.ratio, self.q = ratio, min(SMOOTH_RATIO, ratio)
        self.lo, self.rise, self.change, self.prev, self.first = math.inf, 1.0, 1.0, None, None
        self.streak, self.held, self.seen, self.values = 0, [], 0, []
        self.turns, self.up = 0, None  # changes of direction; the last direction (True: up)

    def active(self) -> bool:
        """Whether the rule can fire (it is on and a value has been seen)."""
        return bool(self.ratio) and math.isfinite(self.lo)

    def smooth(self) -> bool:
        """Whether the series counts as smooth (module docstring)."""
        return self.seen >= SMOOTH_SEEN and self.rise * self.rise < self.q and self.turns <= MAX_TURNS

    def levels(self) -> tuple[float, float, float]:
        """(baseline, opening level, closing level)."""
        smooth = self.smooth() or not self.values
        base = self.lo if smooth else statistics.median(self.values)
        level = base * (max(self.q, self.rise ** 2) if smooth else max(self.ratio, self.change ** 2))
        return base, level, level

    def above(self, v: float) -> bool:
        """Whether finite v is above the opening level (no persistence: a re-trigger test)."""
        return self.active() and v > self.levels()[1]

    def fires(self, v: float) -> bool:
        """Feed finite v (not yet pushed); True when it opens a spike (module docstring). A value
        above the level is held out of lo/r; a broken streak gives its values back."""
        if not self.active():
            return False
        above = v > self.levels()[1]
        fell = any(b < a for a, b in zip(self.held, self.held[1:], strict=False))
        if above and not (fell and v > self.held[-1]):
            self.streak += 1
            self.held.append(v)
            return self.streak >= (1 if self.smooth() else WARMUP_PERSIST + (self.seen < 2))
        held, self.streak, self.held = self.held, 0, []
        for x in held:
            self.push(x)
        return self.fires(v) if above else False  # up, down, up: noise; v starts afresh

    def push(self, v: float) -> None:
        """Add a finite value that opened no spike (and is not in a streak)."""
        if self.streak:
            return
        if self.first is None:
            self.first = v
        if self.prev is not None and self.prev > 0 and v > 0:
            self.rise = max(self.rise, v / self.prev, (self.prev / v) ** (1 / FALL_ROOT))
            self.change = max(self.change, v / self.prev, self.prev / v)
            if v != self.prev:
                self.turns += self.up is not None and self.up != (v > self.prev)
                self.up = v > self.prev
        self.prev, self.seen, self.lo = v, self.seen + 1, min(self.lo, v)
        self.values = (self.values + [v])[-KEEP:]

    def reset_streak(self) -> None:
        """Drop the current streak (its values belong to the spike that opened)."""
        self.streak, self.held = 0, []

    def rebase(self, values) -> None:
        """Start over from `values` (an unrecovered episode's tail: the new normal)."""
        self.__init__(self.ratio)
        for v in values:
            self.push(v)

    def state_dict(self) -> dict:
        """JSON-able state (NaN/Inf aside)."""
        return {"lo": self.lo, "rise": self.rise, "change": self.change, "prev": self.prev,
                "first": self.first, "streak": self.streak, "held": list(self.held), "seen": self.seen,
                "values": list(self.values),
                "turns": self.turns, "up": self.up}

    def load_state_dict(self, d: dict) -> None:
        """Restore `state_dict`'s output; a state of the older first-losses rule ({"ref": [...]})
        is rebuilt from its reference values."""
        self.__init__(self.ratio)
        if "ref" in d:
            for v in d["ref"]:
                self.push(v)
            return
        self.lo, self.rise, self.prev, self.first = d["lo"], d["rise"], d["prev"], d.get("first")
        self.change = d.get("change", self.rise)
        self.streak, self.held, self.seen = d.get("streak", 0), list(d.get("held", [])), d.get("seen", 0)
        self.values = list(d.get("values", []))
        self.turns, self.up = d.get("turns", 0), d.get("up")


__all__ = ["WARMUP_PERSIST", "Warmup"]
