"""Which snapshots to measure for one spike: a bounded, deterministic selection around it.

Measuring every captured step is wasteful (a ring of 8, a spike of 20 steps and a tail of 16
is ~45 snapshots, each costing tens of Hessian-vector products). The selection keeps what the
rules compare: the quiet reference (earliest pre-spike snapshot, a baseline if there is one),
the last steps before onset, the onset, the peak, the descent, and the recovered tail.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Selected snapshot steps of one spike, by part, all sorted."""

    ref: int | None
    pre: tuple[int, ...]
    onset: int | None
    during: tuple[int, ...]
    post: tuple[int, ...]

    @property
    def steps(self) -> tuple[int, ...]:
        """Every selected step, sorted, each once."""
        parts = ((self.ref,) if self.ref is not None else ()) + self.pre + \
            ((self.onset,) if self.onset is not None else ()) + self.during + self.post
        return tuple(sorted(set(parts)))


def select(available: list[int], *, onset: int, peak: int, end: int | None,
           max_snapshots: int = 12, lookback: int = 2000) -> Window:
    """Pick at most `max_snapshots` of the `available` snapshot steps for a spike.

    Priority: onset, peak, the step before onset, the reference (earliest step within
    `lookback` before onset), the first step after the peak, the last captured step, then
    evenly spaced fill from the pre-window, the descent and the tail.
    """
    avail = sorted(set(int(s) for s in available))
    before = [s for s in avail if onset - lookback <= s < onset]
    at_onset = onset if onset in avail else None
    stop = end if end is not None else (avail[-1] if avail else onset)
    during = [s for s in avail if onset < s <= stop]
    after = [s for s in avail if s > stop]

    chosen: list[int] = []

    def take(*steps):
        for s in steps:
            if s is not None and s not in chosen and len(chosen) < max_snapshots:
                chosen.append(s)

    take(at_onset, peak if peak in avail else None, before[-1] if before else None,
         before[0] if before else None)
    descent = [s for s in during if s > peak]
    take(descent[0] if descent else None, after[-1] if after else (during[-1] if during else None))
    for pool in (before, during, after):
        for s in spread(pool, max(0, (max_snapshots - len(chosen)) // 2 + 1)):
            take(s)
    chosen.sort()
    return Window(
        ref=before[0] if before and before[0] in chosen else None,
        pre=tuple(s for s in chosen if s < onset and (not before or s != before[0])),
        onset=at_onset,
        during=tuple(s for s in chosen if onset < s <= stop),
        post=tuple(s for s in chosen if s > stop),
    )


def spread(pool: list[int], n: int) -> list[int]:
    """n evenly spaced members of pool (its ends first)."""
    if n <= 0 or not pool:
        return []
    if n >= len(pool):
        return list(pool)
    idx = sorted({round(i * (len(pool) - 1) / max(1, n - 1)) for i in range(n)})
    return [pool[i] for i in idx]
