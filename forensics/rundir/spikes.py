"""The recorder's spikes from its events: the one builder (closed `spike` events, plus episodes still
open when the run ended, from their `spike_open` and `spike_reopen`), used by the reader, the
Recorder (`Recorder.spikes`) and `detect_offline`; the catalog's SQL view is tested against it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


def number(value) -> float:
    """An event number as a float: events store NaN/Inf as "nan"/"inf"/"-inf" (JSON has none)."""
    return float(value) if value is not None else math.nan


@dataclass(frozen=True)
class Spike:
    """One spike episode as seen by the online detector (`spike` event) or `detect_offline`.

    Steps are optimizer steps; `end` is the first step back to normal after the last sub-peak
    (None while open); losses are the watched signal's values (`signal`: the training loss or the
    probe loss); `magnitude` = peak_loss / baseline; `sub_peaks` = ((step, value), ...) of each
    sub-peak of the episode (re-triggers merged into it; one for a single spike); `recovered` is
    False when the detector gave the episode up after max_len steps still high (`end` = that step;
    what followed became the new normal), None when the run ended inside the episode (`end` None).
    """

    spike_id: int
    onset: int
    peak: int
    end: int | None
    peak_loss: float
    baseline: float
    magnitude: float
    signal: str = "loss"
    nonfinite: bool = False
    sub_peaks: tuple = ()
    recovered: bool | None = True

    @classmethod
    def from_event(cls, e: dict) -> Spike:
        """From a `spike` event (docs/format.md) or the detector's dict of the same keys."""
        return cls(spike_id=int(e["spike_id"]), onset=int(e["onset"]), peak=int(e["peak"]),
                   end=None if e.get("end") is None else int(e["end"]),
                   peak_loss=number(e["peak_loss"]), baseline=number(e["baseline"]),
                   magnitude=number(e["magnitude"]), signal=e.get("signal", "loss"),
                   nonfinite=bool(e.get("nonfinite", False)),
                   sub_peaks=tuple((int(p[0]), number(p[1])) for p in e.get("sub_peaks") or ()),
                   recovered=None if e.get("end") is None else bool(e.get("recovered", True)))

    @classmethod
    def from_open_event(cls, e: dict, reopens: Iterable[dict] = ()) -> Spike:
        """From a `spike_open` event whose `spike` never came, and the episode's `spike_reopen`
        events: peak = the highest of their values, end None."""
        marks = [(int(e["step"]), number(e.get("loss")))] + [(int(r["step"]), number(r.get("loss")))
                                                           for r in reopens]
        peak, loss = max(marks, key=lambda m: (not math.isfinite(m[1]), m[1]))
        base = number(e.get("baseline"))
        return cls(spike_id=int(e["spike_id"]), onset=marks[0][0], peak=peak, end=None,
                   peak_loss=loss, baseline=base, magnitude=loss / base if base else math.nan,
                   signal=e.get("signal", "loss"), nonfinite=any(not math.isfinite(m[1]) for m in marks),
                   sub_peaks=tuple(marks), recovered=None)


def spikes_from_events(events: Iterable[dict]) -> list[Spike]:
    """Closed spikes from `spike` events, plus those only opened (`spike_open` without its
    `spike`: the run ended first), sorted by onset. Events are the checked ones of
    `read_events`; the SQL view `spikes` (forensics/catalog/views.py) mirrors this rule."""
    events = list(events)
    found = {e["spike_id"]: Spike.from_event(e) for e in events if e.get("type") == "spike"}
    reopens: dict[int, list] = {}
    for e in events:
        if e.get("type") == "spike_reopen":
            reopens.setdefault(e["spike_id"], []).append(e)
    for e in events:
        if e.get("type") == "spike_open" and e["spike_id"] not in found:
            found[e["spike_id"]] = Spike.from_open_event(e, reopens.get(e["spike_id"], ()))
    return sorted(found.values(), key=lambda s: (s.onset, s.spike_id))
