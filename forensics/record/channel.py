"""The protocol every detector preset implements (`Channel`): the trailing statistics of one
watched series, the loss or the probe loss. Each preset's rule is in forensics.record.presets."""

from __future__ import annotations

from typing import Protocol


class Channel(Protocol):
    """What the detector asks of a preset (see forensics.record.presets for the rules)."""

    count: int
    min_seen: float

    def push(self, v: float) -> None:
        """Add a non-spike value to the trailing window the baseline is computed from."""
        ...

    def check(self, v: float) -> tuple[bool, float, float]:
        """(whether v opens a spike, its score against the window, the baseline it was compared with)."""
        ...

    def baseline(self) -> float:
        """The level the next value is compared against (in loss units; nan before any value)."""
        ...

    def close_level(self, base: float) -> float:
        """The value below which a spike opened against baseline `base` is over."""
        ...

    def ready(self) -> bool:
        """Whether enough values have been seen for `check` to be meaningful."""
        ...

    def window_max(self) -> float:
        """The largest value in the trailing window."""
        ...

    def state_dict(self) -> dict:
        """The channel's state as plain data, for resuming a run."""
        ...

    def load_state_dict(self, d: dict) -> None:
        """Restore the state `state_dict` returned."""
        ...


__all__ = ["Channel"]
