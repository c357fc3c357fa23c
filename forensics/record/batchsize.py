"""The run's usual batch size, for the detector's short-batch trigger.

A short batch (the last batch of an epoch with `drop_last=False`) with a summed loss, or a loss
normalised by the batch size twice, has a loss several times the others' while the objective does
not move: the probe stays quiet, yet it is a spike users see once per epoch. The detector opens a
spike on such a step when its loss is a spike by the loss channel's rule and its batch has at most
`SHORT_SHARE` of the usual rows.

A loss whose scale depends on the batch size makes every short batch's loss large: once the short
batches seen before (at least SHORT_SEEN) had a median loss of at least `level` x the loss window's
median, the kind is established and each later short batch whose loss tops `level` x that median is
a spike too, even below the single-batch rule (`ShortHistory`). A correctly normalised loss (a
3-sample mean is only noisier) has short-batch ratios about 1 and never establishes it.
"""

from __future__ import annotations

import statistics

SHORT_SHARE = 0.5  # a batch with at most this share of the usual rows is short
MIN_SEEN = 4  # batches seen before a usual size exists
MAX_SIZES = 64  # distinct sizes counted (more: variable-length batches; the rarest are dropped)


class UsualRows:
    """Counts of the batch sizes seen; the usual size is the most common one."""

    def __init__(self):
        self.counts: dict[int, int] = {}

    def push(self, rows: int | None) -> None:
        """Count one batch of `rows` rows (None: unknown, ignored)."""
        if rows is None or rows < 1:
            return
        self.counts[rows] = self.counts.get(rows, 0) + 1
        if len(self.counts) > MAX_SIZES:
            del self.counts[min(self.counts, key=self.counts.get)]

    def usual(self) -> int | None:
        """The most common size (the larger on a tie), or None before MIN_SEEN batches."""
        if sum(self.counts.values()) < MIN_SEEN:
            return None
        return max(self.counts, key=lambda r: (self.counts[r], r))

    def short(self, rows: int | None) -> bool:
        """Whether a batch of `rows` rows has at most SHORT_SHARE of the usual rows."""
        usual = self.usual()
        return rows is not None and usual is not None and rows <= SHORT_SHARE * usual

    def state_dict(self) -> dict:
        """The counts, JSON-able (keys as strings)."""
        return {str(k): v for k, v in self.counts.items()}

    def load_state_dict(self, d: dict) -> None:
        """Restore `state_dict`'s output."""
        self.counts = {int(k): int(v) for k, v in (d or {}).items()}


SHORT_SEEN = 2  # short batches seen before their losses, as a population, can establish the kind
SHORT_KEEP = 32  # ratios kept


class ShortHistory:
    """The ratios (loss / loss window median) of the short batches seen so far."""

    def __init__(self):
        self.ratios: list[float] = []

    def established(self, level: float) -> bool:
        """Whether the short batches seen so far had a median ratio of at least `level`."""
        return len(self.ratios) >= SHORT_SEEN and statistics.median(self.ratios) >= level

    def push(self, ratio: float) -> None:
        """Add one short batch's ratio (the last SHORT_KEEP are kept)."""
        self.ratios = (self.ratios + [ratio])[-SHORT_KEEP:]

    def state_dict(self) -> list:
        """The ratios, JSON-able."""
        return list(self.ratios)

    def load_state_dict(self, d) -> None:
        """Restore `state_dict`'s output (None: none seen)."""
        self.ratios = [float(x) for x in (d or [])]


__all__ = ["SHORT_SEEN", "SHORT_SHARE", "ShortHistory", "UsualRows"]
