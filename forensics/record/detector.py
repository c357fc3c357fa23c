"""Online loss-spike detector: cheap per step, robust to minibatch noise, resumable, reusable offline.

Presets (all close a spike at the first step whose value is back to normal: below
`close_ratio` x the baseline frozen at onset or, for robust/robust_flat/zscore, within `close_z`
spreads of the frozen window; or after `max_len` steps. With signal="both" the other signal must
be back below its own level frozen at onset too. A NaN/Inf loss always opens a spike):

    robust       (default) trend-aware robust z on y = log L over the trailing window of the
                 last n <= `window` non-spike values y_1..y_n (spike steps are left out, so the
                 window runs straight past a spike's hole), h = n // 2:
                     b   = (med y_{n-h+1..n} - med y_{1..h}) / (n - h)   two-halves median slope
                     a0  = med_i (y_i + b (n + 1 - i))        the trend one position past the window
                     a   = max(a0, min(y_{n-7..n}))           never under the last 8 values (knees)
                     s   = max(1.4826 med_i |y_i + b (n + 1 - i) - a0|, mad_floor)
                     z   = (log L_t - a) / s
                 opens when z > threshold AND L_t > min_ratio * exp(a) (baseline exp(a), frozen
                 at onset). A steadily falling loss neither inflates s (the residuals about the
                 trend stay small) nor sits under a stale median, so a catapult or an edge-of-
                 stability rise from a falling baseline is flagged at its first large step.
                 O(window) numpy per step.
    robust_flat  the previous default, kept for comparison: b = 0 and no floor, i.e.
                 z = (log L - median(log L_w)) / (1.4826 MAD(log L_w)), baseline exp(median).
                 On a log-linear descent MAD ~ w/4 x slope, so it fires late or not at all.
    Presets copying other trainers' rules:
    zscore       OLMo-core style: (L - mean) / std over the last 128 non-spike steps > 6.
    ratio        Lightning/metaseq style: L >= threshold x the running mean of the window.
    megatron     Megatron style: L > threshold (10) x the largest non-spike loss seen so far.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import asdict, dataclass, fields

import numpy as np

SIGNALS = ("loss", "probe", "both")
_PRESETS = {
    "robust": dict(window=64, min_history=16, threshold=6.0, min_ratio=1.5, close_ratio=1.2, max_len=100),
    "robust_flat": dict(window=64, min_history=16, threshold=6.0, min_ratio=1.5, close_ratio=1.2, max_len=100),
    "zscore": dict(window=128, min_history=32, threshold=6.0, min_ratio=1.0, close_ratio=1.2, max_len=100),
    "ratio": dict(window=32, min_history=8, threshold=3.0, min_ratio=1.0, close_ratio=1.5, max_len=100),
    "megatron": dict(window=0, min_history=1, threshold=10.0, min_ratio=1.0, close_ratio=2.0, max_len=100),
}
_LOG_PRESETS = ("robust", "robust_flat")  # score log L
_RECENT = 8  # robust: the trend's prediction is floored at the minimum of the window's last _RECENT values


@dataclass
class DetectorConfig:
    """Detector settings (JSON-able; stored in run.json["detector"]). None fields take the preset's value."""

    preset: str = "robust"
    signal: str = "loss"
    window: int | None = None
    min_history: int | None = None
    threshold: float | None = None
    min_ratio: float | None = None
    close_ratio: float | None = None
    max_len: int | None = None
    close_z: float = 3.0  # robust/robust_flat/zscore: also closes once the value is back within close_z spreads
    mad_floor: float = 0.01  # floor on 1.4826*MAD (robust: of the trend residuals) in log space: a perfectly
    #                          smooth loss is not "infinitely quiet"

    def __post_init__(self):
        if self.preset not in _PRESETS:
            raise ValueError(f"unknown detector preset {self.preset!r}; choose from {', '.join(_PRESETS)}")
        if self.signal not in SIGNALS:
            raise ValueError(f"detector signal must be one of {SIGNALS}, got {self.signal!r}")
        for k, v in _PRESETS[self.preset].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if self.window < 0 or self.min_history < 1 or self.max_len < 1:
            raise ValueError(f"detector window/min_history/max_len out of range: {self}")
        if self.preset != "megatron" and self.window < self.min_history:
            raise ValueError(f"detector window ({self.window}) must be >= min_history ({self.min_history})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def coerce(cls, spec) -> "DetectorConfig":
        """Accept a preset name, a dict or a DetectorConfig."""
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, str):
            return cls(preset=spec)
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        raise ValueError(f"detector must be a preset name, dict or DetectorConfig, got {spec!r}")


class _Channel:
    """Trailing statistics of one watched series (loss or probe) over non-spike steps."""

    def __init__(self, cfg: DetectorConfig):
        self.cfg = cfg
        self.log = cfg.preset in _LOG_PRESETS
        self.values: deque = deque()  # log values (robust presets) or values, of the window
        self.sorted: list = []  # robust_flat: sorted log values of the window
        self.total = 0.0  # zscore/ratio: running sums
        self.total_sq = 0.0
        self.max_seen = -math.inf
        self.count = 0
        self._fit = None  # robust: (center, scale) of the trend fit, until the next push

    def push(self, v: float) -> None:
        cfg = self.cfg
        self.count += 1
        self.max_seen = max(self.max_seen, v)
        if cfg.preset == "megatron":
            return
        self._fit = None
        x = math.log(max(v, 1e-30)) if self.log else v
        self.values.append(x)
        if cfg.preset == "robust_flat":
            bisect.insort(self.sorted, x)
        else:
            self.total += x
            self.total_sq += x * x
        if len(self.values) > cfg.window:
            old = self.values.popleft()
            if cfg.preset == "robust_flat":
                del self.sorted[bisect.bisect_left(self.sorted, old)]
            else:
                self.total -= old
                self.total_sq -= old * old

    def _center_scale(self) -> tuple[float, float]:
        """Robust presets: (baseline log value for the next step, spread) of the window.

        robust: the two-halves median-slope trend of the window's log values against their
        position in it (spike steps are left out of the window, so the trend never runs across
        the hole a spike leaves: the loss after a spike need not rejoin the old line),
        evaluated one position past the last value but not below the lowest of the last
        _RECENT values, and 1.4826 x the median absolute residual about the trend;
        robust_flat: the median and 1.4826 MAD. Both spreads floored at mad_floor.
        """
        cfg = self.cfg
        if cfg.preset == "robust_flat":
            s, n = self.sorted, len(self.sorted)
            center = 0.5 * (s[(n - 1) // 2] + s[n // 2])
            dev = sorted(abs(x - center) for x in s)
            mad = 0.5 * (dev[(n - 1) // 2] + dev[n // 2])
            return center, max(1.4826 * mad, cfg.mad_floor)
        if self._fit is not None:  # unchanged since the last push
            return self._fit
        n = len(self.values)
        y = np.fromiter(self.values, dtype=np.float64, count=n)
        h = n // 2  # older half y[:h], newer half y[n-h:] (the middle value of an odd n in neither)
        slope = float(np.median(y[n - h:]) - np.median(y[:h])) / (n - h) if h else 0.0
        r = y + slope * np.arange(n, 0, -1)  # each value carried along the trend to position n
        center = float(np.median(r))
        np.subtract(r, center, out=r)
        np.abs(r, out=r)
        scale = max(1.4826 * float(np.median(r)), cfg.mad_floor)
        # never below the lowest of the last few values: a descent flattening into a floor (a knee)
        # would otherwise be extrapolated under the floor and the floor called a spike
        center = max(center, float(y[-_RECENT:].min()))
        self._fit = (center, scale)
        return self._fit

    def check(self, v: float) -> tuple[bool, float, float]:
        """(fires, score, baseline) for a finite value v against the window."""
        cfg = self.cfg
        if self.count < cfg.min_history:
            return False, 0.0, math.nan
        if cfg.preset == "megatron":
            base = self.max_seen
            score = v / base if base > 0 else 0.0
            return score > cfg.threshold, score, base
        if self.log:
            center, scale = self._center_scale()
            base = math.exp(center)
            if v <= cfg.min_ratio * base:  # the common case: no z needed
                return False, 0.0, base
            score = (math.log(v) - center) / scale
            return score > cfg.threshold, score, base
        n = len(self.values)
        mean = self.total / n
        if cfg.preset == "ratio":
            score = v / mean if mean > 0 else 0.0
            return score >= cfg.threshold, score, mean
        var = max(self.total_sq / n - mean * mean, 0.0)
        std = max(math.sqrt(var), 1e-12 * abs(mean), 1e-30)
        score = (v - mean) / std
        return score > cfg.threshold and v > cfg.min_ratio * mean, score, mean

    def baseline(self) -> float:
        """The level the next value is compared against (NaN before any history)."""
        if self.cfg.preset == "megatron":
            return self.max_seen if self.count else math.nan
        if not self.values:
            return math.nan
        if self.log:
            return math.exp(self._center_scale()[0])
        return self.total / len(self.values)

    def close_level(self, base: float) -> float:
        """Value below which a spike opened against this (frozen) window is over."""
        cfg = self.cfg
        level = cfg.close_ratio * base if math.isfinite(base) else math.inf
        if self.count < cfg.min_history or cfg.preset in ("ratio", "megatron"):
            return level
        if self.log:
            center, scale = self._center_scale()
            return max(level, math.exp(center + cfg.close_z * scale))
        n = len(self.values)
        mean = self.total / n
        std = math.sqrt(max(self.total_sq / n - mean * mean, 0.0))
        return max(level, mean + cfg.close_z * std)

    def state_dict(self) -> dict:
        return {"values": list(self.values), "max_seen": self.max_seen, "count": self.count}

    def load_state_dict(self, d: dict) -> None:
        self.__init__(self.cfg)
        self.values = deque(d["values"])
        self.sorted = sorted(self.values)
        self.total = sum(self.values)
        self.total_sq = sum(x * x for x in self.values)
        self.max_seen = d["max_seen"]
        self.count = d["count"]


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


class SpikeDetector:
    """Feed one value per step with `update`; returns `spike_open` / `spike` event dicts.

    Event dicts use the fields of docs/format.md (events.jsonl), so the recorder logs them as is.
    """

    def __init__(self, config: DetectorConfig | str | dict = "robust"):
        self.config = DetectorConfig.coerce(config)
        names = ("loss", "probe") if self.config.signal == "both" else (self.config.signal,)
        self.channels = {n: _Channel(self.config) for n in names}
        self.next_id = 0
        self.open: dict | None = None  # the spike currently open
        self.nonfinite_latched = False  # after a NaN spike times out, wait for a finite value

    @property
    def current_spike_id(self) -> int | None:
        return None if self.open is None else self.open["spike_id"]

    def update(self, step: int, value: float | None, *, probe: float | None = None) -> list[dict]:
        """Observe the loss (and optionally the probe loss) of `step`; return new events."""
        vals = {"loss": None if value is None else float(value),
                "probe": None if probe is None else float(probe)}
        if self.open is not None:
            return self._update_open(step, vals)
        if "loss" not in self.channels and vals["loss"] is not None and not _finite(vals["loss"]):
            if not self.nonfinite_latched:
                return [self._open(step, "loss", vals["loss"], math.inf, math.nan, None)]
        for name, ch in self.channels.items():
            v = vals[name]
            if v is None:
                continue
            if not _finite(v):
                if self.nonfinite_latched:
                    continue
                return [self._open(step, name, v, math.inf, ch.baseline(), ch)]
            self.nonfinite_latched = False
            fires, score, base = ch.check(v)
            if fires:
                return [self._open(step, name, v, score, base, ch)]
        for name, ch in self.channels.items():
            if _finite(vals[name]):
                ch.push(vals[name])
        return []

    def _open(self, step, signal, v, score, base, ch) -> dict:
        # every watched channel must be back below its level (frozen now) for the spike to close
        levels = {n: (ch.close_level(base) if n == signal else c.close_level(c.baseline()))
                  for n, c in self.channels.items() if n == signal or c.count >= c.cfg.min_history}
        if ch is None:
            levels[signal] = math.inf
        self.open = {"spike_id": self.next_id, "onset": step, "peak": step, "peak_loss": v,
                     "baseline": base, "signal": signal, "nonfinite": not _finite(v),
                     "close_level": levels[signal], "close_levels": levels}
        self.next_id += 1
        return {"type": "spike_open", "spike_id": self.open["spike_id"], "step": step, "loss": v,
                "baseline": base, "score": score, "signal": signal}

    def _update_open(self, step: int, vals: dict) -> list[dict]:
        sp = self.open
        v = vals[sp["signal"]]
        if v is not None:
            if not _finite(v):
                sp["nonfinite"] = True
                if _finite(sp["peak_loss"]):
                    sp["peak"], sp["peak_loss"] = step, v
            elif _finite(sp["peak_loss"]) and v > sp["peak_loss"]:
                sp["peak"], sp["peak_loss"] = step, v
            if _finite(v) and v < sp["close_level"] and self._others_back(sp, vals):
                return [self._close(step)]
        if step - sp["onset"] >= self.config.max_len:
            if sp["nonfinite"] and not _finite(v):
                self.nonfinite_latched = True
            return [self._close(step)]
        return []

    @staticmethod
    def _others_back(sp: dict, vals: dict) -> bool:
        """signal="both": the other channel is not above its close level (or has no value now)."""
        for n, level in sp.get("close_levels", {}).items():
            v = vals.get(n)
            if n != sp["signal"] and v is not None and not (_finite(v) and v < level):
                return False
        return True

    def _close(self, end: int | None) -> dict:
        sp, self.open = self.open, None
        base = sp["baseline"]
        mag = sp["peak_loss"] / base if _finite(base) and base > 0 else math.nan
        return {"type": "spike", "spike_id": sp["spike_id"], "onset": sp["onset"], "peak": sp["peak"],
                "end": end, "peak_loss": sp["peak_loss"], "baseline": base, "magnitude": mag,
                "signal": sp["signal"], "nonfinite": sp["nonfinite"]}

    def finish(self) -> list[dict]:
        """Close a spike still open at the end of the run (end=None)."""
        return [] if self.open is None else [self._close(None)]

    def state_dict(self) -> dict:
        """Everything needed to resume detection exactly (JSON-able)."""
        return {"config": self.config.to_dict(), "next_id": self.next_id, "open": dict(self.open) if self.open else None,
                "nonfinite_latched": self.nonfinite_latched,
                "channels": {n: ch.state_dict() for n, ch in self.channels.items()}}

    def load_state_dict(self, d: dict) -> None:
        self.__init__(DetectorConfig.from_dict(d["config"]))
        self.next_id = d["next_id"]
        self.open = dict(d["open"]) if d["open"] else None
        self.nonfinite_latched = d.get("nonfinite_latched", False)
        for n, sd in d["channels"].items():
            if n in self.channels:
                self.channels[n].load_state_dict(sd)


def detect_offline(steps, values, config: DetectorConfig | str | dict = "robust", *, probe=None) -> list:
    """Run the online detector over a recorded series; returns `Spike`s (end=None if still open).

    `steps` and `values` are sequences of equal length (e.g. columns of `run.steps`); `probe`,
    if given, holds the probe loss per step (None/NaN where not evaluated).
    """
    from forensics.rundir.reader import Spike

    det = SpikeDetector(config)
    steps, values = list(steps), list(values)
    if len(steps) != len(values):
        raise ValueError(f"steps ({len(steps)}) and values ({len(values)}) differ in length")
    probe = list(probe) if probe is not None else [None] * len(steps)
    out = []
    for s, v, p in zip(steps, values, probe):
        p = None if p is None or (isinstance(p, float) and math.isnan(p)) else p
        v = None if v is None else v
        out += [e for e in det.update(int(s), v, probe=p) if e["type"] == "spike"]
    out += det.finish()
    return [Spike.from_event(e) for e in out]
