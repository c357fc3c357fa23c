"""Reading the recorded per-step scalars (`steps/`) around a spike, for the engines that
measure from them (`WITHOUT_SNAPSHOTS`): one column as float arrays, nulls as NaN."""

from __future__ import annotations

import weakref

import numpy as np

LOOKBACK = 256  # steps before onset an engine reads (rules look back at most this far)
TAIL = 16  # steps after the spike's end (or peak, while it is open)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # run -> {column: arrays}


def _whole(run, name: str):
    """(steps, values) of a whole column, converted once per run and column."""
    cached = _CACHE.setdefault(run, {})
    if name not in cached:
        table = run.steps
        if table is None or table.num_rows == 0 or name not in table.column_names:
            cached[name] = (np.zeros(0, dtype=np.int64), np.zeros(0))
        else:
            steps = np.asarray(table.column("step").to_numpy(zero_copy_only=False), dtype=np.int64)
            raw = table.column(name).to_pylist()
            cached[name] = (steps, np.array([np.nan if v is None else float(v) for v in raw], dtype=float))
    return cached[name]


def column(run, name: str, lo: int | None = None, hi: int | None = None, *, check: bool = True):
    """(steps int64, values float64) of the `steps/` column `name` with lo <= step <= hi
    (None: unbounded), sorted by step; nulls are NaN. Both empty when the run recorded no
    steps or not that column (an older or partial run).

    With `check=False` lost chunks are tolerated (a whole-run statistic that a gap only thins;
    the caller checks the steps it cannot do without with `require_readable`).

    Raises:
        Failed: a steps chunk that may hold some of lo..hi could not be read — what is missing
            is unknown, so an engine reading it must not report "nothing found".
    """
    if check:
        require_readable(run, lo, hi)
    return between(*_whole(run, name), lo, hi)


def require_readable(run, lo: int | None, hi: int | None) -> None:
    """Raise `Failed` naming the chunk when steps lo..hi may lie in a chunk the reader skipped."""
    from forensics.analyzer.measure import Failed

    for gap in getattr(run, "steps_gaps", ()):
        if gap.overlaps(lo, hi):
            raise Failed(gap.describe())


def between(steps: np.ndarray, values: np.ndarray, lo: int | None, hi: int | None):
    """The (steps, values) pairs with lo <= step <= hi (None: unbounded); both arrays of one length."""
    keep = np.ones(len(steps), dtype=bool)
    if lo is not None:
        keep &= steps >= lo
    if hi is not None:
        keep &= steps <= hi
    return steps[keep], values[keep]


def first_step(run) -> int | None:
    """The first step `steps/` recorded (the run's start, 0 for a fresh recorder), or None (none
    recorded, or the first chunk is unreadable)."""
    if any(gap.after is None for gap in getattr(run, "steps_gaps", ())):
        return None  # the chunk holding the start was lost: the first readable step is not it
    steps, _ = column(run, "step", check=False)
    return int(steps.min()) if steps.size else None


def spike_range(ctx) -> tuple[int, int]:
    """The steps an engine reads for one spike: LOOKBACK before onset to TAIL after its end."""
    stop = ctx.end if ctx.end is not None else ctx.peak
    return ctx.onset - LOOKBACK, max(stop, ctx.onset) + TAIL
