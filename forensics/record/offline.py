"""`detect_offline`: the online detector run over a recorded series (the same events, the same
`Spike`s as a recorded run's)."""

from __future__ import annotations

import math


def _column(name: str, values, n: int) -> list:
    """`values` as a list of length n (None: n Nones); ValueError naming the column otherwise."""
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} values but steps has {n}: one value per step is needed")
    return values


def _missing(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def detect_offline(steps, values, config="robust", *, probe=None, rows=None, probe_set=None) -> list:
    """Run the online detector over a recorded series; returns its `Spike`s (episodes; end=None if
    still open at the end), built by `spikes_from_events` like a recorded run's.

    Args:
        steps, values: the step numbers and the training loss per step (e.g. columns of
            `run.steps`), sequences of equal length.
        config: a preset name, dict or `DetectorConfig`.
        probe: the probe loss per step (None/NaN where not evaluated), or None.
        rows: the batch's row count per step (the `batch_rows` column; None where unknown), or
            None: the short-batch rule needs it.
        probe_set: the probe set id per step (`SpikeDetector.update`), or None.

    Raises:
        ValueError: a column's length differs from `steps`' (the message names it).
    """
    from forensics.record.detector import SpikeDetector
    from forensics.rundir.spikes import spikes_from_events

    steps = list(steps)
    n = len(steps)
    values = _column("values", values, n)
    probe, rows = _column("probe", probe, n), _column("rows", rows, n)
    sets = _column("probe_set", probe_set, n)
    det = SpikeDetector(config)
    events = []
    for s, v, p, r, k in zip(steps, values, probe, rows, sets, strict=True):
        r = None if r is None or (isinstance(r, float) and math.isnan(r)) else int(r)
        events += det.update(int(s), v, probe=_missing(p), rows=r, probe_set=k)
    events += det.finish()
    return spikes_from_events(events)


def probe_sets(steps, probe, events) -> list | None:
    """The auto probe's set id per step (`detect_offline`'s `probe_set`) rebuilt from the run's events:
    "first" (the interim probe, the first batch) from the first step with a finite probe loss, then,
    after the step of the `probe` event that drew the set, "drawn" (or "off" when it switched the probe
    off), as the recorder passed them online; None when the run has no `probe` event (no auto probe,
    or a given probe: one set throughout). Without it the offline detector compares the drawn set's
    loss with the first batch's and reports the switch as a spike."""
    decided = [e for e in events if e.get("type") == "probe" and isinstance(e.get("step"), int)]
    if not decided:
        return None
    at, active = decided[0]["step"], bool(decided[0].get("active"))
    probe = _column("probe", probe, len(list(steps)))
    out, seen = [], False
    for s, p in zip(steps, probe, strict=True):
        seen = seen or _missing(p) is not None
        out.append(("drawn" if active else "off") if int(s) > at else ("first" if seen else None))
    return out


__all__ = ["detect_offline", "probe_sets"]
