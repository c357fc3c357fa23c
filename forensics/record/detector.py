"""Online loss-spike detector: cheap per step, robust to minibatch noise, resumable, reusable offline.

Presets (all close a spike at the first step whose value is back to normal: below
`close_ratio` x the baseline frozen at onset or, for robust/zscore, within `close_z` spreads
of the frozen window; or after `max_len` steps. A NaN/Inf loss always opens a spike):

    robust    z = (log L - median(log L_w)) / (1.4826 MAD(log L_w)) over the trailing window w
              of non-spike steps; opens when z > threshold AND L > min_ratio * exp(median).
    zscore    OLMo-core style: (L - mean) / std over the last 128 non-spike steps > 6.
    ratio     Lightning/metaseq style: L >= threshold x the running mean of the window.
    megatron  Megatron style: L > threshold (10) x the largest non-spike loss seen so far.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import asdict, dataclass, fields

SIGNALS = ("loss", "probe", "both")
_PRESETS = {
    "robust": dict(window=64, min_history=16, threshold=6.0, min_ratio=1.5, close_ratio=1.2, max_len=100),
    "zscore": dict(window=128, min_history=32, threshold=6.0, min_ratio=1.0, close_ratio=1.2, max_len=100),
    "ratio": dict(window=32, min_history=8, threshold=3.0, min_ratio=1.0, close_ratio=1.5, max_len=100),
    "megatron": dict(window=0, min_history=1, threshold=10.0, min_ratio=1.0, close_ratio=2.0, max_len=100),
}


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
    close_z: float = 3.0  # robust/zscore: also closes once the value is back within close_z spreads
    mad_floor: float = 0.01  # floor on 1.4826*MAD in log space: a perfectly flat loss is not "infinitely quiet"

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
        self.values: deque = deque()
        self.sorted: list = []  # robust: sorted log values of the window
        self.total = 0.0  # zscore/ratio: running sums
        self.total_sq = 0.0
        self.max_seen = -math.inf
        self.count = 0

    def push(self, v: float) -> None:
        cfg = self.cfg
        self.count += 1
        self.max_seen = max(self.max_seen, v)
        if cfg.preset == "megatron":
            return
        x = math.log(max(v, 1e-30)) if cfg.preset == "robust" else v
        self.values.append(x)
        if cfg.preset == "robust":
            bisect.insort(self.sorted, x)
        else:
            self.total += x
            self.total_sq += x * x
        if len(self.values) > cfg.window:
            old = self.values.popleft()
            if cfg.preset == "robust":
                del self.sorted[bisect.bisect_left(self.sorted, old)]
            else:
                self.total -= old
                self.total_sq -= old * old

    def check(self, v: float) -> tuple[bool, float, float]:
        """(fires, score, baseline) for a finite value v against the window."""
        cfg = self.cfg
        if self.count < cfg.min_history:
            return False, 0.0, math.nan
        if cfg.preset == "megatron":
            base = self.max_seen
            score = v / base if base > 0 else 0.0
            return score > cfg.threshold, score, base
        if cfg.preset == "robust":
            s, n = self.sorted, len(self.sorted)
            center = 0.5 * (s[(n - 1) // 2] + s[n // 2])
            base = math.exp(center)
            if v <= cfg.min_ratio * base:  # cheap O(1) exit for the common case
                return False, 0.0, base
            dev = sorted(abs(x - center) for x in s)
            mad = 0.5 * (dev[(n - 1) // 2] + dev[n // 2])
            score = (math.log(v) - center) / max(1.4826 * mad, cfg.mad_floor)
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

    def close_level(self, base: float) -> float:
        """Value below which a spike opened against this (frozen) window is over."""
        cfg = self.cfg
        level = cfg.close_ratio * base if math.isfinite(base) else math.inf
        if self.count < cfg.min_history or cfg.preset in ("ratio", "megatron"):
            return level
        if cfg.preset == "robust":
            s, n = self.sorted, len(self.sorted)
            center = 0.5 * (s[(n - 1) // 2] + s[n // 2])
            dev = sorted(abs(x - center) for x in s)
            scale = max(1.4826 * 0.5 * (dev[(n - 1) // 2] + dev[n // 2]), cfg.mad_floor)
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
                return [self._open(step, name, v, math.inf, self._baseline(ch), ch)]
            self.nonfinite_latched = False
            fires, score, base = ch.check(v)
            if fires:
                return [self._open(step, name, v, score, base, ch)]
        for name, ch in self.channels.items():
            if _finite(vals[name]):
                ch.push(vals[name])
        return []

    def _baseline(self, ch: _Channel) -> float:
        if ch.cfg.preset == "robust" and ch.sorted:
            n = len(ch.sorted)
            return math.exp(0.5 * (ch.sorted[(n - 1) // 2] + ch.sorted[n // 2]))
        if ch.cfg.preset == "megatron":
            return ch.max_seen if ch.count else math.nan
        return sum(ch.values) / len(ch.values) if ch.values else math.nan

    def _open(self, step, signal, v, score, base, ch) -> dict:
        self.open = {"spike_id": self.next_id, "onset": step, "peak": step, "peak_loss": v,
                     "baseline": base, "signal": signal, "nonfinite": not _finite(v),
                     "close_level": ch.close_level(base) if ch is not None else math.inf}
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
            if _finite(v) and v < sp["close_level"]:
                return [self._close(step)]
        if step - sp["onset"] >= self.config.max_len:
            if sp["nonfinite"] and not _finite(v):
                self.nonfinite_latched = True
            return [self._close(step)]
        return []

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
