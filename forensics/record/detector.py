"""Online loss-spike detector: cheap per step, from the first step, one episode per spike, resumable,
reusable offline (`detect_offline`, forensics.record.offline).

Opening (per watched channel, loss and/or probe): a NaN/Inf value always opens a spike; before the
channel has `min_history` values the running-minimum warm-up rule (forensics.record.warmup), then
the preset's rule over the trailing window (forensics.record.presets). signal="auto" watches the
probe (the objective) by `RecentMin`; while the probe set is being drawn the first batch is the
probe (probe_set "first") and a value above objective_ratio x the run's first training loss (that
batch's loss before any step, which training on it cannot undercut) opens: a catapult in the first
steps of small-batch SGD is seen. The training loss then opens only by its window's rule and above
batch_ratio x its window's highest value (a bad batch; not before its window exists); a short
batch's loss spike is an episode of its own.

Episodes: a sub-peak ends at the first value back to normal (below `close_ratio` x the baseline
frozen at onset, or within `close_z` spreads of the frozen window; with signal="both" the other
channel back too). A value in the next `merge_gap` steps that would open a spike is a re-trigger, a
new sub-peak of the same episode. The `spike` event comes when that recovery window has passed:
`end` = the first step back to normal after the last sub-peak, `sub_peaks` = [[step, value], ...].
A sub-peak not back after `max_len` steps ends the episode with `recovered` false (`end` = that
step) and its last values become the channel's window: the continuation is the new normal.
"""

from __future__ import annotations

import copy
import math

from forensics.record.batchsize import ShortHistory, UsualRows
from forensics.record.detector_config import SIGNALS, DetectorConfig
from forensics.record.presets import RecentMin, make_channel
from forensics.record.warmup import WARMUP_PERSIST, Warmup

__all__ = ["SIGNALS", "WARMUP_PERSIST", "DetectorConfig", "SpikeDetector", "detect_offline"]
TAIL = 64  # values of an open sub-peak kept: the window after an unrecovered episode


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


class SpikeDetector:
    """Feed one value per step with `update`; returns event dicts (`spike_open`, `spike_reopen`,
    `spike`) with the fields of docs/format.md (events.jsonl), so the recorder logs them as is."""

    def __init__(self, config: DetectorConfig | str | dict = "robust"):
        self.config = DetectorConfig.coerce(config)
        self.names = ("loss", "probe") if self.config.signal in ("both", "auto") else (self.config.signal,)
        self.channels = {n: self._channel(n) for n in self.names}
        self.next_id, self.open = 0, None  # the episode currently open
        self.probe_seen, self.probe_set = False, None  # "auto": a probe value came; its set (update's)
        self.nonfinite_latched = False  # after a NaN spike times out, wait for a finite value
        self.warm = {n: Warmup(self.config.warmup_ratio) for n in self.names}
        self.rows, self.shorts = UsualRows(), ShortHistory()  # a short batch's spike (batchsize.py)

    def _channel(self, name: str):  # signal="auto" watches the probe by RecentMin
        auto_probe = name == "probe" and self.config.signal == "auto"
        return RecentMin(self.config) if auto_probe else make_channel(self.config)

    @property
    def current_spike_id(self) -> int | None:
        """Id of the episode whose sub-peak is in progress (None when none is, or it is recovering)."""
        return None if self.open is None or self.open["recovered_at"] is not None else self.open["spike_id"]

    def update(self, step: int, value: float | None, *, probe: float | None = None,
               rows: int | None = None, probe_set: str | None = None) -> list[dict]:
        """Observe the loss (and optionally the probe loss, the batch's row count and the id of the
        probe set the probe loss was computed on) of `step`; return new events.

        `probe_set` (optional, backward compatible): None = unchanged; "first" = the first batch
        (while the probe set is being drawn); "off" = no probe any more; any other id = a probe set.
        A new id restarts the probe channel (values of another set are not comparable)."""
        vals = {"loss": None if value is None else float(value),
                "probe": None if probe is None else float(probe)}
        done = self._switch_probe(step, probe_set) if probe_set not in (None, self.probe_set) else []
        small, _ = self.rows.short(rows), self.rows.push(rows)
        short = small and self._short_fires(vals["loss"])
        if small and not short and _finite(vals["loss"]):
            vals["loss"] = None  # another population: kept out of the loss window (and its max)
        if short:  # an episode of its own: one still open ends here
            sp, ch, v, w = self.open, self.channels["loss"], vals["loss"], self.warm["loss"]
            done += [] if sp is None else [self._close(sp["recovered_at"] or step)]  # recovered_at >= 1
            base, close = (ch.baseline(), None) if ch.ready() else (w.lo, w.levels()[2])
            return done + [self._open(step, "loss", v, v / ch.window_max(), base, ch, "short", close)]
        if self.open is not None:
            return done + self._update_open(step, vals)
        return done + self._update_closed(step, vals)

    def _switch_probe(self, step: int, new: str) -> list[dict]:
        """A new probe set: restart the probe channel; "off" also ends an episode on the probe."""
        self.probe_set, ratio = new, self.config.warmup_ratio
        if "probe" in self.channels:
            self.channels["probe"], self.warm["probe"] = self._channel("probe"), Warmup(ratio)
        self.probe_seen, sp = self.probe_seen and new != "off", self.open
        ends = new == "off" and sp is not None and sp["signal"] == "probe"
        return [self._close(sp["recovered_at"] or step)] if ends else []

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
        """A short batch's loss above batch_ratio x the loss window's highest value, or above
        batch_ratio x its median once earlier short batches established the kind (batchsize.py)."""
        ch = self.channels.get("loss")
        if ch is None or not _finite(v) or not self.config.batch_ratio or ch.count == 0:
            return False
        med, r = ch.window_median(), self.config.batch_ratio
        ratio = v / med if med > 0 else math.inf
        fires = v > r * ch.window_max() or (self.shorts.established(r) and ratio > r)
        self.shorts.push(ratio)
        return fires

    def _update_closed(self, step: int, vals: dict) -> list[dict]:
        openers = self._openers(vals)
        if "loss" not in openers and vals["loss"] is not None and not _finite(vals["loss"]):
            if not self.nonfinite_latched:  # a NaN/Inf training loss always opens a spike
                return [self._open(step, "loss", vals["loss"], math.inf, math.nan, None, "nonfinite")]
        gated = len(openers) == 2 and self.config.signal == "auto"
        for name in openers:
            ch, v = self.channels[name], vals[name]
            if v is None:
                continue
            if not _finite(v):
                if self.nonfinite_latched:
                    continue
                return [self._open(step, name, v, math.inf, ch.baseline(), ch, "nonfinite")]
            self.nonfinite_latched = False
            hit = self._fires(name, v, gated)
            if hit is not None:
                return [self._open(step, name, v, *hit)]
        self._push(vals)
        return []

    def _first_batch_level(self) -> float | None:
        """While the first batch is the probe: objective_ratio x the run's first training loss."""
        if self.probe_set != "first" or self.config.signal != "auto" or "loss" not in self.warm:
            return None
        first = self.warm["loss"].first
        return self.config.objective_ratio * first if first is not None and first > 0 else math.inf

    def _fires(self, name: str, v: float, gated: bool):
        """(score, baseline, channel, rule, close level) if finite v opens a spike on `name`, else None."""
        ch, w = self.channels[name], self.warm[name]
        level = self._first_batch_level() if name == "probe" else None
        if level is not None:
            if v <= level:
                return None
            base = level / self.config.objective_ratio
            return v / base, base, ch, "first_batch", level
        if ch.ready():
            (fires, score, base), rule, close = ch.check(v), "window", None
        elif gated and name == "loss":  # the probe watches; a bad batch needs the loss's window
            return None
        else:
            fires, rule = w.fires(v), "warmup"
            base, _, close = w.levels()
            score = v / base if base > 0 else math.inf
        if fires and name == "loss" and gated:
            r = self.config.batch_ratio
            fires = bool(r) and ch.count > 0 and v > r * ch.window_max()
        return (score, base, ch, rule, close) if fires else None

    def _push(self, vals: dict) -> None:
        for name in (n for n in self.channels if _finite(vals[n])):
            self.channels[name].push(vals[name]), self.warm[name].push(vals[name])

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
            w.reset_streak()
        self.open = {"spike_id": self.next_id, "onset": step, "peak": step, "peak_loss": v, "baseline": base,
                     "signal": signal, "nonfinite": not _finite(v), "close_level": levels[signal],
                     "close_levels": levels, "sub_peaks": [], "sub_onset": step, "cur": [step, v],
                     "recovered_at": None, "tail": [v] if _finite(v) else [], "recovered": True}
        self.next_id += 1
        return {"type": "spike_open", "spike_id": self.open["spike_id"], "step": step, "loss": v,
                "baseline": base, "score": score, "signal": signal, "rule": rule}

    def _track(self, sp: dict, step: int, v: float) -> None:
        """Raise the episode's and the current sub-peak's highest value (a NaN/Inf counts as highest)."""
        sp["nonfinite"] = sp["nonfinite"] or not _finite(v)
        if _finite(v):
            sp["tail"] = (sp.get("tail", []) + [v])[-TAIL:]
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
                sp["recovered_at"], sp["sub_onset"], sp["cur"], sp["tail"] = None, step, [step, v], []
                self._track(sp, step, v)
                return [{"type": "spike_reopen", "spike_id": sp["spike_id"], "step": step, "loss": v,
                         "signal": sp["signal"]}]
            self._push(vals)  # a normal value inside the recovery window
            return []
        if v is not None:
            self._track(sp, step, v)
            if _finite(v) and v < sp["close_level"] and self._others_back(sp, vals):
                sp["sub_peaks"].append(list(sp["cur"]))
                sp["recovered_at"] = step
                return [self._close(step)] if self.config.merge_gap == 0 else []
        if step - sp["sub_onset"] >= self.config.max_len:
            if sp["nonfinite"] and not _finite(v):
                self.nonfinite_latched = True
            else:
                self._rebase(sp["signal"], sp.get("tail", []))
            sp["sub_peaks"].append(list(sp["cur"]))
            sp["recovered"] = False
            return [self._close(step)]
        return []

    def _rebase(self, name: str, tail: list) -> None:
        """An unrecovered episode: its last values become the channel's window (the new normal)."""
        if tail:
            self.channels[name] = ch = self._channel(name)
            for x in tail:
                ch.push(x)
            self.warm[name].rebase(tail)

    def _would_open(self, name: str, v: float) -> bool:
        """Whether finite v would open a spike on channel `name` now (a re-trigger in a recovery window)."""
        ch, level = self.channels[name], self._first_batch_level() if name == "probe" else None
        if level is not None:
            return v > level
        return ch.check(v)[0] if ch.ready() else self.warm[name].above(v)

    @staticmethod
    def _others_back(sp: dict, vals: dict) -> bool:
        """signal="both": the other channel is not above its close level (or has no value now)."""
        return all(n == sp["signal"] or vals.get(n) is None or (_finite(vals[n]) and vals[n] < level)
                   for n, level in sp.get("close_levels", {}).items())

    def _close(self, end: int | None) -> dict:
        sp, self.open = self.open, None
        if not sp["sub_peaks"] or sp["sub_peaks"][-1][0] < sp["sub_onset"]:
            sp["sub_peaks"].append(list(sp["cur"]))  # closed while a sub-peak was in progress
        base = sp["baseline"]
        mag = sp["peak_loss"] / base if _finite(base) and base > 0 else math.nan
        return {"type": "spike", "spike_id": sp["spike_id"], "onset": sp["onset"], "peak": sp["peak"],
                "end": end, "peak_loss": sp["peak_loss"], "baseline": base, "magnitude": mag,
                "signal": sp["signal"], "nonfinite": sp["nonfinite"], "sub_peaks": sp["sub_peaks"],
                "recovered": sp.get("recovered", True)}

    def finish(self) -> list[dict]:
        """Close the episode still open at the end of the run (end, recovered None unless it recovered)."""
        if self.open is not None and self.open["recovered_at"] is None:
            self.open["recovered"] = None  # the run ended inside a sub-peak: not known
        return [] if self.open is None else [self._close(self.open["recovered_at"])]

    def state_dict(self) -> dict:
        """Everything needed to resume detection exactly (JSON-able but for NaN/Inf floats)."""
        return {"config": self.config.to_dict(), "next_id": self.next_id, "open": copy.deepcopy(self.open),
                "nonfinite_latched": self.nonfinite_latched, "probe_seen": self.probe_seen,
                "probe_set": self.probe_set, "warm": {n: w.state_dict() for n, w in self.warm.items()},
                "rows": self.rows.state_dict(), "shorts": self.shorts.state_dict(),
                "channels": {n: ch.state_dict() for n, ch in self.channels.items()}}

    def load_state_dict(self, d: dict) -> None:
        """Restore `state_dict`'s output, or an older version's (ValueError on a config this
        version cannot read)."""
        self.__init__(DetectorConfig.from_dict(d["config"]))
        self.next_id = d["next_id"]
        self.open = copy.deepcopy(d["open"]) if d["open"] else None
        if self.open is not None:  # a state written before episodes
            sp = self.open
            for k, v in (("sub_peaks", []), ("sub_onset", sp["onset"]), ("recovered_at", None),
                         ("cur", [sp["peak"], sp["peak_loss"]]), ("tail", []), ("recovered", True)):
                sp.setdefault(k, v)
        self.nonfinite_latched = d.get("nonfinite_latched", False)
        self.probe_seen, self.probe_set = d.get("probe_seen", False), d.get("probe_set")
        self.rows.load_state_dict(d.get("rows")), self.shorts.load_state_dict(d.get("shorts"))
        for n, w in d.get("warm", {}).items():
            if n in self.warm:
                self.warm[n].load_state_dict(w)
        for n, sd in d["channels"].items():
            if n in self.channels:
                self.channels[n].load_state_dict(sd)


from forensics.record.offline import detect_offline  # noqa: E402 - re-exported (it builds a SpikeDetector)
