"""The recorder's spikes from its events: the one builder (closed `spike` events, plus spikes still
open when the run ended, from their `spike_open`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable


def number(value) -> float:
    """An event number as a float: events store NaN/Inf as "nan"/"inf"/"-inf" (JSON has none)."""
    return float(value) if value is not None else math.nan


@dataclass(frozen=True)
class Spike:
    """One spike as seen by the online detector (`spike` event) or `detect_offline`.

    Steps are optimizer steps; `end` is the first step back to normal (None while open);
    losses are the recorded training loss; `magnitude` = peak_loss / baseline.
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

    @classmethod
    def from_event(cls, e: dict) -> "Spike":
        """From a `spike` event (docs/format.md) or the detector's dict of the same keys."""
        return cls(spike_id=int(e["spike_id"]), onset=int(e["onset"]), peak=int(e["peak"]),
                   end=None if e.get("end") is None else int(e["end"]),
                   peak_loss=number(e["peak_loss"]), baseline=number(e["baseline"]),
                   magnitude=number(e["magnitude"]), signal=e.get("signal", "loss"),
                   nonfinite=bool(e.get("nonfinite", False)))

    @classmethod
    def from_open_event(cls, e: dict) -> "Spike":
        """From a `spike_open` event whose `spike` never came: peak = onset, end None."""
        loss, base = number(e.get("loss")), number(e.get("baseline"))
        return cls(spike_id=int(e["spike_id"]), onset=int(e["step"]), peak=int(e["step"]), end=None,
                   peak_loss=loss, baseline=base, magnitude=loss / base if base else math.nan,
                   signal=e.get("signal", "loss"), nonfinite=not math.isfinite(loss))


def spikes_from_events(events: Iterable[dict]) -> list[Spike]:
    """Closed spikes from `spike` events, plus those only opened (`spike_open` without its
    `spike`: the run ended first), sorted by onset. Events are the checked ones of
    `read_events`; the SQL view `spikes` (forensics/catalog/views.py) mirrors this rule."""
    events = list(events)
    found = {e["spike_id"]: Spike.from_event(e) for e in events if e.get("type") == "spike"}
    for e in events:
        if e.get("type") == "spike_open" and e["spike_id"] not in found:
            found[e["spike_id"]] = Spike.from_open_event(e)
    return sorted(found.values(), key=lambda s: (s.onset, s.spike_id))
