"""One warn-once helper for the recorder and the framework adapters."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

log = logging.getLogger("forensics.record")


class RecorderWarning(UserWarning):
    """Something the recorder could not do (budget exhausted, write error, unknown optimizer,
    dropped input)."""


class WarnOnce:
    """Emit each keyed warning once per owner (one recorder, one adapter), whatever the warning filters say.

    The `warnings` module's own "once" deduplicates per process and by message text, so a second
    run in the same process would stay silent, and a test's `simplefilter("always")` would repeat
    a warning every step; a recorder needs once per run and per kind of trouble. `on_first(message)`
    is called the first time each key fires (the recorder logs it as a `warning` event).
    """

    def __init__(self, category: type[Warning] = RecorderWarning,
                 on_first: Callable[[str], None] | None = None):
        self.category, self.on_first = category, on_first
        self._seen: set[str] = set()

    def seen(self, key: str) -> bool:
        """Whether the warning `key` has already fired (each fires once per recorder)."""
        return key in self._seen

    def __call__(self, key: str, message: str, *, stacklevel: int = 3) -> bool:
        """Warn `message` (prefixed "spike forensics: ") unless `key` already fired; True if it warned."""
        if key in self._seen:
            return False
        self._seen.add(key)
        log.warning("spike forensics: %s", message)
        warnings.warn(f"spike forensics: {message}", self.category, stacklevel=stacklevel)
        if self.on_first is not None:
            try:
                self.on_first(message)
            except Exception:  # a warning must never become an error
                log.exception("spike forensics: could not log a warning event")
        return True


__all__ = ["RecorderWarning", "WarnOnce"]
