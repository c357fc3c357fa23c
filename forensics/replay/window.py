"""A spike's replay window in a run: the earliest pre-onset snapshot, and the steps after it
whose batches were recorded (one snapshot per step), with what is missing named."""

from __future__ import annotations

from dataclasses import dataclass, field

from forensics.rundir.reader import Run, SnapshotInfo, Spike


@dataclass
class Window:
    """The steps of one spike that can be replayed.

    steps: start .. last replayable step, consecutive; every one has a snapshot (its batch,
        hyperparameters and recorded loss); steps[0] is the state the replay starts from.
    wanted_end: the last snapshot of the spike (the replay would like to reach it).
    missing: steps between start and `wanted_end` with no snapshot (their batch was not kept).
    """

    spike: Spike
    steps: list[int]
    snapshots: dict[int, SnapshotInfo]
    wanted_end: int
    missing: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def start(self) -> int:
        """The step whose snapshot the replay starts from."""
        return self.steps[0]

    @property
    def reaches_peak(self) -> bool:
        """Whether the replayable steps include the spike's peak."""
        return bool(self.steps) and self.steps[-1] >= self.spike.peak


def find_spike(run: Run, spike_id: int) -> Spike:
    """The spike `spike_id` of `run`; KeyError listing the ids there are."""
    for s in run.spikes:
        if s.spike_id == spike_id:
            return s
    raise KeyError(f"{run.path}: no spike {spike_id} (spikes: {[s.spike_id for s in run.spikes]})")


def spike_window(run: Run, spike_id: int) -> Window:
    """The replay window of spike `spike_id`: from its earliest pre-onset snapshot (else the
    earliest of its snapshots) through its last snapshot, cut at the first step without one.

    Raises:
        KeyError: no such spike.
        ValueError: the spike has no snapshot at all (spike budget exhausted, capture off).
    """
    spike = find_spike(run, spike_id)
    by_step = {s.step: s for s in run.snapshots}
    # the sparse `context` snapshots before the dense ring have no batches between them: they
    # are for the rules (when was a limit crossed), not a place to replay from
    own = sorted(s.step for s in run.snapshots if s.spike_id == spike.spike_id and s.role != "context")
    if not own:
        raise ValueError(f"{run.path}: spike {spike_id} has no snapshots (recorded after the spike "
                         f"budget ran out, or with capture off): nothing to replay from")
    # the longest stretch of consecutive snapshots through the onset: back to the earliest
    # pre-onset one (a sparse baseline just before the ring's first extends it), forward to the last
    anchor = spike.onset if spike.onset in by_step else own[0]
    start = anchor
    while start - 1 in by_step and (start - 1 >= own[0] or by_step[start - 1].role in ("baseline", "pre")):
        start -= 1
    last = anchor
    while last + 1 in by_step and last + 1 <= own[-1]:
        last += 1
    lo, hi = min(start, own[0]), own[-1]
    missing = [t for t in range(lo, hi + 1) if t not in by_step]
    win = Window(spike, list(range(start, last + 1)), {t: by_step[t] for t in range(start, last + 1)},
                 hi, missing)
    if start >= spike.onset:
        win.notes.append(f"no snapshot before the onset (step {spike.onset}) joins the window: the replay "
                         f"starts at step {start}, so the baseline is its own loss")
    if missing:
        stride = (run.manifest.get("recorder") or {}).get("stride")
        win.notes.append(f"batches not recorded for steps {_ranges(missing)} (recorder stride = {stride}; "
                         f"every step of the window needs its batch): the replay runs steps {start}..{last}")
    return win


def _ranges(steps: list[int]) -> str:
    out, lo = [], None
    for i, t in enumerate(steps):
        lo = t if lo is None else lo
        if i + 1 == len(steps) or steps[i + 1] != t + 1:
            out.append(str(lo) if lo == t else f"{lo}..{t}")
            lo = None
    return ", ".join(out[:6]) + (" ..." if len(out) > 6 else "")
