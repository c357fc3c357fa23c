"""Online loss-spike detector: cheap per step, from the first step, one episode per spike, resumable,
reusable offline (`detect_offline`).

Opening (per watched channel, loss and/or probe): a NaN/Inf value always opens a spike. Before the
channel has `min_history` values, the warm-up rule compares with the first losses: with
m, lo and hi the median, lowest and highest of the channel's first WARMUP_REF (3) values (values
in a streak excluded), WARMUP_PERSIST (3) values in a row above m x max(warmup_ratio, (hi/lo)^2)
open a spike at the third, with baseline m; its sub-peak is over below max(close_ratio m, hi).
The trade-off: two steps of lag, and only jumps far above the first values count (a lone outlier
of a noisy minibatch loss, or a loss whose first values already scatter, does not open one; a
spike in the first min_history steps after a fast early descent is seen only if it tops the
first losses by that much). From then on, the
preset's rule over the trailing window (forensics.record.presets).

Episodes: a spike's sub-peak ends at the first value back to normal (below `close_ratio` x the
baseline frozen at onset, or within `close_z` spreads of the frozen window; with signal="both" the
other channel back too), or after `max_len` steps. The episode then stays open for `merge_gap`
steps: a value inside that recovery window that would open a spike (the same rule, against the
window as it is then) is a re-trigger (ringing, an echo) and a new sub-peak of the same episode.
The episode's `spike` event is written when the recovery window has passed, with `end` = the
first step back to normal after the last sub-peak and `sub_peaks` = [[step, value], ...] of each
sub-peak's highest value. A short batch's loss spike is an episode of its own (`_short_fires`).
"""

from __future__ import annotations

import copy
import math

from forensics.record.batchsize import UsualRows
from forensics.record.detector_config import SIGNALS, DetectorConfig
from forensics.record.presets import RecentMin, make_channel

__all__ = ["SIGNALS", "WARMUP_PERSIST", "DetectorConfig", "SpikeDetector", "detect_offline"]
WARMUP_PERSIST = 3  # warm-up: consecutive values above the warm-up level needed to open
WARMUP_REF = 3  # warm-up: how many first values are the reference


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


class SpikeDetector:
    """Feed one value per step with `update`; returns event dicts (`spike_open`, `spike_reopen`,
    `spike`) with the fields of docs/format.md (events.jsonl), so the recorder logs them as is."""

    def __init__(self, config: DetectorConfig | str | dict = "robust"):
        self.config = DetectorConfig.coerce(config)
        names = ("loss", "probe") if self.config.signal in ("both", "auto") else (self.config.signal,)
        self.channels = {n: (RecentMin(self.config) if n == "probe" and self.config.signal == "auto"
                             else make_channel(self.config)) for n in names}
        self.next_id = 0
        self.open: dict | None = None  # the episode currently open
        self.probe_seen = False  # signal="auto": a probe value has arrived
        self.nonfinite_latched = False  # after a NaN spike times out, wait for a finite value
        self.warm = {n: {"ref": [], "held": [], "streak": 0} for n in names}
        self.rows = UsualRows()  # batch sizes seen: a short batch's loss spike opens (batchsize.py)

    @property
    def current_spike_id(self) -> int | None:
        """Id of the episode whose sub-peak is in progress (None when none is, or it is recovering)."""
        return None if self.open is None or self.open["recovered_at"] is not None else self.open["spike_id"]

    def update(self, step: int, value: float | None, *, probe: float | None = None,
               rows: int | None = None) -> list[dict]:
        """Observe the loss (and optionally the probe loss and the batch's row count) of `step`;
        return new events. A short batch's loss spike opens a spike of its own (`_short_fires`)."""
        vals = {"loss": None if value is None else float(value),
                "probe": None if probe is None else float(probe)}
        small, _ = self.rows.short(rows), self.rows.push(rows)
        short = small and self._short_fires(vals["loss"])
        if small and not short and _finite(vals["loss"]):
            vals["loss"] = None  # another population: kept out of the loss window (and its max)
        if short:  # an episode of its own: one still open ends here
            sp, ch, v = self.open, self.channels["loss"], vals["loss"]
            done = [] if sp is None else [self._close(sp["recovered_at"] or step)]  # recovered_at >= 1
            warm = self._warm_levels(self.warm["loss"]) if not ch.ready() else None
            base, close = (ch.baseline(), None) if warm is None else (warm[0], warm[2])
            return done + [self._open(step, "loss", v, v / ch.window_max(), base, ch, "short", close)]
        if self.open is not None:
            return self._update_open(step, vals)
        return self._update_closed(step, vals)

    def _openers(self, vals: dict) -> tuple:
        """The channels that may open a spike: signal="auto" watches the probe once it has a value
        (the objective; the training loss then opens only above batch_ratio x its window's highest
        value), the training loss before that; "both" either; otherwise the one signal."""
        sig = self.config.signal
        if sig == "auto":
            self.probe_seen = self.probe_seen or _finite(vals["probe"])
            return ("probe", "loss") if self.probe_seen else ("loss",)
        return ("loss", "probe") if sig == "both" else (sig,)

    def _short_fires(self, v) -> bool:
        """A short batch's loss above batch_ratio x the loss window's highest value (a noisy loss hides
        it from the z rule; the probe does not see it: `forensics.record.batchsize`)."""
        ch = self.channels.get("loss")
        return (ch is not None and _finite(v) and bool(self.config.batch_ratio)
                and bool(self.warm["loss"]["ref"]) and v > self.config.batch_ratio * ch.window_max())

    def _update_closed(self, step: int, vals: dict) -> list[dict]:
        openers = self._openers(vals)
        if "loss" not in openers and vals["loss"] is not None and not _finite(vals["loss"]):
            if not self.nonfinite_latched:  # a NaN/Inf training loss always opens a spike
                return [self._open(step, "loss", vals["loss"], math.inf, math.nan, None, "nonfinite")]
        for name in openers:
            ch, v = self.channels[name], vals[name]
            if v is None:
                continue
            if not _finite(v):
                if self.nonfinite_latched:
                    continue
                return [self._open(step, name, v, math.inf, ch.baseline(), ch, "nonfinite")]
            self.nonfinite_latched = False
            if ch.ready():
                fires, score, base = ch.check(v)
                if fires and name == "loss" and len(openers) == 2 and self.config.signal == "auto":
                    fires = bool(self.config.batch_ratio) and v > self.config.batch_ratio * ch.window_max()
                if fires:
                    return [self._open(step, name, v, score, base, ch, "window")]
            elif self._warm_fires(name, v):
                base, _, close = self._warm_levels(self.warm[name])
                return [self._open(step, name, v, v / base, base, ch, "warmup", close=close)]
        self._push(vals)
        return []

    def _warm_fires(self, name: str, v: float) -> bool:
        """The warm-up rule (module docstring) for finite v; a value in a streak is held out of the
        reference values (and added to them if the streak breaks)."""
        w = self.warm[name]
        if not self.config.warmup_ratio or not w["ref"]:
            return False
        if v > self._warm_levels(w)[1]:
            w["streak"] += 1
            w["held"].append(v)
            return w["streak"] >= WARMUP_PERSIST
        w["streak"], held, w["held"] = 0, w["held"], []
        for x in held:
            self._add_ref(w, x)
        return False

    def _warm_levels(self, w: dict) -> tuple[float, float, float]:
        """(baseline, opening level, closing level) of the warm-up rule from the reference values."""
        ref = sorted(w["ref"])
        n = len(ref)
        base = 0.5 * (ref[(n - 1) // 2] + ref[n // 2])
        q = ref[-1] / ref[0] if ref[0] > 0 else math.inf
        return base, base * max(self.config.warmup_ratio, q * q), max(self.config.close_ratio * base, ref[-1])

    @staticmethod
    def _add_ref(w: dict, x: float) -> None:
        if len(w["ref"]) < WARMUP_REF:
            w["ref"].append(x)

    def _push(self, vals: dict) -> None:
        for name, ch in self.channels.items():
            if _finite(vals[name]):
                ch.push(vals[name])
                w = self.warm[name]
                if w["streak"] == 0:
                    self._add_ref(w, vals[name])

    def _open(self, step, signal, v, score, base, ch, rule, close=None) -> dict:
        # every watched channel must be back below its level (frozen now) for the sub-peak to end
        both = self.config.signal == "both" or rule == "short"  # its aftermath is in the objective
        openers = ("loss", "probe") if both else (signal,)  # "auto": its own signal
        levels = {n: (ch.close_level(base) if n == signal else c.close_level(c.baseline()))
                  for n, c in self.channels.items() if n == signal or (n in openers and c.ready())}
        if ch is None:
            levels[signal] = math.inf
        if close is not None:
            levels[signal] = close
        for w in self.warm.values():
            w["streak"], w["held"] = 0, []
        self.open = {"spike_id": self.next_id, "onset": step, "peak": step, "peak_loss": v, "baseline": base,
                     "signal": signal, "nonfinite": not _finite(v), "close_level": levels[signal],
                     "close_levels": levels, "sub_peaks": [], "sub_onset": step, "cur": [step, v],
                     "recovered_at": None}
        self.next_id += 1
        return {"type": "spike_open", "spike_id": self.open["spike_id"], "step": step, "loss": v,
                "baseline": base, "score": score, "signal": signal, "rule": rule}

    def _track(self, sp: dict, step: int, v: float) -> None:
        """Raise the episode's and the current sub-peak's highest value (a NaN/Inf counts as highest)."""
        sp["nonfinite"] = sp["nonfinite"] or not _finite(v)
        if _finite(sp["peak_loss"]) and (not _finite(v) or v > sp["peak_loss"]):
            sp["peak"], sp["peak_loss"] = step, v
        if _finite(sp["cur"][1]) and (not _finite(v) or v > sp["cur"][1]):
            sp["cur"][0], sp["cur"][1] = step, v

    def _update_open(self, step: int, vals: dict) -> list[dict]:
        sp = self.open
        v = vals[sp["signal"]]
        if sp["recovered_at"] is not None:
            if step - sp["recovered_at"] >= self.config.merge_gap:
                return [self._close(sp["recovered_at"])] + self._update_closed(step, vals)
            if v is not None and (not _finite(v) or self._would_open(sp["signal"], v)):
                sp["recovered_at"], sp["sub_onset"], sp["cur"] = None, step, [step, v]
                self._track(sp, step, v)
                return [{"type": "spike_reopen", "spike_id": sp["spike_id"], "step": step, "loss": v,
                         "signal": sp["signal"]}]
            self._push(vals)  # a normal value inside the recovery window
            return []
        if v is not None:
            self._track(sp, step, v)
            if _finite(v) and v < sp["close_level"] and self._others_back(sp, vals):
                sp["sub_peaks"].append(list(sp["cur"]))
                if self.config.merge_gap == 0:
                    return [self._close(step)]
                sp["recovered_at"] = step
                return []
        if step - sp["sub_onset"] >= self.config.max_len:
            if sp["nonfinite"] and not _finite(v):
                self.nonfinite_latched = True
            sp["sub_peaks"].append(list(sp["cur"]))
            return [self._close(step)]
        return []

    def _would_open(self, name: str, v: float) -> bool:
        """Whether finite v would open a spike on channel `name` now (a re-trigger in a recovery window)."""
        ch = self.channels[name]
        if ch.ready():
            return ch.check(v)[0]
        w = self.warm[name]
        return bool(self.config.warmup_ratio and w["ref"]) and v > self._warm_levels(w)[1]

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
        if not sp["sub_peaks"] or sp["sub_peaks"][-1][0] < sp["sub_onset"]:
            sp["sub_peaks"].append(list(sp["cur"]))  # closed while a sub-peak was in progress
        base = sp["baseline"]
        mag = sp["peak_loss"] / base if _finite(base) and base > 0 else math.nan
        return {"type": "spike", "spike_id": sp["spike_id"], "onset": sp["onset"], "peak": sp["peak"],
                "end": end, "peak_loss": sp["peak_loss"], "baseline": base, "magnitude": mag,
                "signal": sp["signal"], "nonfinite": sp["nonfinite"], "sub_peaks": sp["sub_peaks"]}

    def finish(self) -> list[dict]:
        """Close the episode still open at the end of the run (end=None unless it had recovered)."""
        if self.open is None:
            return []
        return [self._close(self.open["recovered_at"])]

    def state_dict(self) -> dict:
        """Everything needed to resume detection exactly (JSON-able but for NaN/Inf floats)."""
        return {"config": self.config.to_dict(), "next_id": self.next_id, "open": copy.deepcopy(self.open),
                "nonfinite_latched": self.nonfinite_latched, "probe_seen": self.probe_seen,
                "warm": copy.deepcopy(self.warm), "rows": self.rows.state_dict(),
                "channels": {n: ch.state_dict() for n, ch in self.channels.items()}}

    def load_state_dict(self, d: dict) -> None:
        """Restore `state_dict`'s output (ValueError on a config this version cannot read)."""
        self.__init__(DetectorConfig.from_dict(d["config"]))
        self.next_id = d["next_id"]
        self.open = copy.deepcopy(d["open"]) if d["open"] else None
        if self.open is not None:  # a state written before episodes
            self.open.setdefault("sub_peaks", [])
            self.open.setdefault("sub_onset", self.open["onset"])
            self.open.setdefault("cur", [self.open["peak"], self.open["peak_loss"]])
            self.open.setdefault("recovered_at", None)
        self.nonfinite_latched = d.get("nonfinite_latched", False)
        self.probe_seen = d.get("probe_seen", False)
        self.rows.load_state_dict(d.get("rows"))
        for n, w in d.get("warm", {}).items():
            if n in self.warm:
                self.warm[n] = copy.deepcopy(w)
        for n, sd in d["channels"].items():
            if n in self.channels:
                self.channels[n].load_state_dict(sd)


def detect_offline(steps, values, config: DetectorConfig | str | dict = "robust", *, probe=None) -> list:
    """Run the online detector over a recorded series; returns its `Spike`s (episodes; end=None if
    still open at the end), built by `spikes_from_events` like a recorded run's.

    `steps` and `values` are sequences of equal length (e.g. columns of `run.steps`); `probe`,
    if given, holds the probe loss per step (None/NaN where not evaluated). ValueError if the
    lengths differ.
    """
    from forensics.rundir.spikes import spikes_from_events

    det = SpikeDetector(config)
    steps, values = list(steps), list(values)
    if len(steps) != len(values):
        raise ValueError(f"steps ({len(steps)}) and values ({len(values)}) differ in length")
    probe = list(probe) if probe is not None else [None] * len(steps)
    events = []
    for s, v, p in zip(steps, values, probe, strict=False):
        p = None if p is None or (isinstance(p, float) and math.isnan(p)) else p
        events += det.update(int(s), v, probe=p)
    events += det.finish()
    return spikes_from_events(events)
