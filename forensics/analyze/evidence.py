"""What the rules see: one spike's context and its measurements, and what they return.

The measurement engines fill an `Evidence` (long format: step, engine, metric, value, the
same rows that land in `analysis/measurements.parquet`); the rules read only from it, so a
finding can always be re-derived from the stored measurements.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SpikeContext:
    """The facts about one spike and its run that the rules need besides measurements.

    `optimizer` is the family: "adam" (Adam/AdamW), "sgd" (with `momentum`, 0 for plain
    GD/SGD) or "other". `ref_step` is the quiet step the spike is compared against (the
    earliest pre-spike snapshot); `pre_steps` are the snapshot steps before onset.
    """

    run_id: str
    spike_id: int
    onset: int
    peak: int
    end: int | None
    peak_loss: float
    baseline_loss: float
    optimizer: str
    momentum: float = 0.0
    betas: tuple[float, float] | None = None
    eps: float | None = None
    nonfinite: bool = False
    ref_step: int | None = None
    pre_steps: tuple[int, ...] = ()
    post_steps: tuple[int, ...] = ()
    task: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def magnitude(self) -> float:
        if not math.isfinite(self.peak_loss) or self.baseline_loss <= 0:
            return math.inf
        return self.peak_loss / self.baseline_loss


@dataclass
class Evidence:
    """Measurements of one spike in long format, plus its context.

    Each row is (step, engine, metric, value). `series(metric)` returns the steps and
    values of one metric sorted by step; `at(metric, step)` one value or None.
    """

    context: SpikeContext
    rows: list[tuple[int, str, str, float]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # engine -> why it did not run

    def add(self, step: int, engine: str, metric: str, value: float) -> None:
        self.rows.append((int(step), engine, metric, float(value)))

    def add_many(self, step: int, engine: str, values: dict[str, float]) -> None:
        for metric, value in values.items():
            if value is not None:
                self.add(step, engine, metric, value)

    def skip(self, engine: str, reason: str) -> None:
        self.skipped[engine] = reason

    def series(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        pairs = sorted((s, v) for s, _, m, v in self.rows if m == metric)
        steps = np.array([p[0] for p in pairs], dtype=np.int64)
        values = np.array([p[1] for p in pairs], dtype=np.float64)
        return steps, values

    def at(self, metric: str, step: int) -> float | None:
        for s, _, m, v in self.rows:
            if m == metric and s == step:
                return v
        return None

    def has(self, metric: str) -> bool:
        return any(m == metric for _, _, m, _ in self.rows)


@dataclass
class Finding:
    """One rule's call on one spike (a row of `analysis/findings.parquet`)."""

    rule: str
    status: str  # fired | not_fired | inconclusive
    score: float
    message: str
    hint: str = ""
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    primary: bool = False

    @property
    def fired(self) -> bool:
        return self.status == "fired"

    def to_row(self, run_id: str, spike_id: int) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "spike_id": int(spike_id),
            "rule": self.rule,
            "status": self.status,
            "score": float(self.score),
            "message": self.message,
            "hint": self.hint,
            "reason": self.reason,
            "evidence": json.dumps(_jsonable(self.evidence), sort_keys=True),
            "thresholds": json.dumps(_jsonable(self.thresholds), sort_keys=True),
            "primary": bool(self.primary),
        }


def inconclusive(rule: str, reason: str, **evidence: Any) -> Finding:
    """A finding that could not be decided, with the reason in words."""
    return Finding(rule, "inconclusive", 0.0, f"inconclusive: {reason}", reason=reason,
                   evidence=evidence)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else repr(v)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    return obj
