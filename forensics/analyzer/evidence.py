"""What the rules see: one spike's context and its measurements, and what they return.

The measurement engines fill an `Evidence` (long format: step, engine, metric, value, the
same rows that land in `analysis/measurements.parquet`); each rule reads only the view of
the engines it needs (`Evidence.view`), so a finding can always be re-derived from the
stored measurements and never depends on an engine it did not declare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

import numpy as np

from forensics.rundir.jsonsafe import dumps


@dataclass(frozen=True)
class SpikeContext:
    """The facts about one spike and its run that the rules need besides measurements.

    `optimizer` is the family: "adam" (Adam/AdamW), "sgd" (with `momentum`, 0 for plain
    GD/SGD) or "other". `ref_step` is the quiet step the spike is compared against (the
    earliest pre-spike snapshot); `pre_steps` are the snapshot steps before onset. `hparams`:
    the run's hyperparameters a hint reads (`forensics.analyzer.hints.run_settings`). `signal`: the
    watched series that opened it (a probe reacts to a batch's update one step later).
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
    hparams: dict = field(default_factory=dict)
    signal: str = "loss"  # the series that opened the spike: "loss" or "probe" (the objective)

    @property
    def magnitude(self) -> float:
        """peak_loss / baseline_loss (inf for a non-finite peak or a non-positive baseline)."""
        if not math.isfinite(self.peak_loss) or self.baseline_loss <= 0:
            return math.inf
        return self.peak_loss / self.baseline_loss


def declares(metrics, metric: str) -> bool:
    """Whether `metrics` (an engine's METRICS keys) declare `metric`: by name, or as a member
    of a declared family `name@*` (metrics `name@<suffix>`, e.g. one per layer and head)."""
    return metric in metrics or ("@" in metric and metric.split("@", 1)[0] + "@*" in metrics)


class UndeclaredMetric(LookupError):
    """A metric was written by an engine that does not declare it, or read by a rule whose
    engines (`Mechanism.needs`) do not produce it."""


@dataclass
class Evidence:
    """Measurements of one spike in long format, plus its context.

    Each row is (step, engine, metric, value). `series(metric)` returns the steps and
    values of one metric sorted by step; `at(metric, step)` one value or None.
    `catalog` (engine -> its declared metrics, `forensics.analyzer.measure.METRICS`) makes
    the evidence strict: `add` raises UndeclaredMetric for a metric its engine does not
    declare, and `view(engines)` for a read outside those engines' metrics. The pipeline
    always passes it.
    """

    context: SpikeContext
    rows: list[tuple[int, str, str, float]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # engine -> why it did not run
    failed: dict[str, str] = field(default_factory=dict)  # engine -> the error that stopped it
    catalog: Mapping[str, Mapping[str, Any]] | None = None

    def add(self, step: int, engine: str, metric: str, value: float) -> None:
        """Add one row; UndeclaredMetric when strict and `engine` does not declare `metric`."""
        if self.catalog is not None and not declares(self.catalog.get(engine, ()), metric):
            raise UndeclaredMetric(
                f"engine {engine!r} wrote metric {metric!r}, which its METRICS do not declare "
                f"(forensics/analyzer/measure/{engine}.py)")
        self.rows.append((int(step), engine, metric, float(value)))

    def add_many(self, step: int, engine: str, values: dict[str, float]) -> None:
        """Add one row per {metric: value} at `step` (None values are left out)."""
        for metric, value in values.items():
            if value is not None:
                self.add(step, engine, metric, value)

    def skip(self, engine: str, reason: str) -> None:
        """Record why `engine` did not run (or not fully) on this spike."""
        self.skipped[engine] = reason

    def fail(self, engine: str, reason: str) -> None:
        """Record that `engine` could not measure this spike because something broke (it
        raised, the model or loss could not be rebuilt, the snapshots are unreadable): unlike
        a skip (the engine does not apply), a failure makes the spike `not_analyzed` when no
        rule can answer without it (`forensics.analyzer.verdict`)."""
        self.skipped[engine] = reason
        self.failed[engine] = reason

    def series(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps int64, values float64) of `metric`, sorted by step."""
        return _series(self.rows, metric)

    def at(self, metric: str, step: int) -> float | None:
        """The value of `metric` at `step`, or None."""
        return _at(self.rows, metric, step)

    def has(self, metric: str) -> bool:
        """Whether `metric` was measured at any step."""
        return any(m == metric for _, _, m, _ in self.rows)

    def family(self, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every measured member `name@<suffix>` of a metric family: suffix -> (steps, values)."""
        return _family(self.rows, name)

    def view(self, engines: tuple[str, ...]) -> "EvidenceView":
        """What a rule that needs `engines` may read: their rows, their skip reasons, and
        (with a catalog) only the metrics they declare."""
        declared = None
        if self.catalog is not None:
            unknown = [e for e in engines if e not in self.catalog]
            if unknown:
                raise UndeclaredMetric(f"no engine named {', '.join(unknown)} "
                                       f"(engines: {', '.join(self.catalog)})")
            declared = frozenset(m for e in engines for m in self.catalog[e])
        return EvidenceView(self, tuple(engines), declared)


@dataclass(frozen=True)
class EvidenceView:
    """A rule's window on an `Evidence`: the same reading methods, limited to its engines.

    Reading a metric that none of `engines` declares raises UndeclaredMetric, so a rule
    (or a tie-break) cannot depend on an engine it did not ask for.
    """

    evidence: Evidence
    engines: tuple[str, ...]
    declared: frozenset[str] | None

    @property
    def context(self) -> SpikeContext:
        """The spike's context (not a measurement: always readable)."""
        return self.evidence.context

    @property
    def skipped(self) -> dict[str, str]:
        """Skip reasons of this view's engines only."""
        return {e: r for e, r in self.evidence.skipped.items() if e in self.engines}

    def _rows(self, metric: str):
        if self.declared is not None and not declares(self.declared, metric):
            raise UndeclaredMetric(f"metric {metric!r} is not produced by the engines this rule "
                                   f"needs ({', '.join(self.engines)}); add its engine to `needs`")
        return [r for r in self.evidence.rows if r[1] in self.engines]

    def series(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """As `Evidence.series`, for a declared metric of this view's engines."""
        return _series(self._rows(metric), metric)

    def at(self, metric: str, step: int) -> float | None:
        """As `Evidence.at`, for a declared metric of this view's engines."""
        return _at(self._rows(metric), metric, step)

    def has(self, metric: str) -> bool:
        """As `Evidence.has`, for a declared metric of this view's engines."""
        return any(m == metric for _, _, m, _ in self._rows(metric))

    def family(self, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """As `Evidence.family`, for a family `name@*` of this view's engines."""
        return _family(self._rows(name + "@*"), name)


def _series(rows, metric: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = sorted((s, v) for s, _, m, v in rows if m == metric)
    steps = np.array([p[0] for p in pairs], dtype=np.int64)
    values = np.array([p[1] for p in pairs], dtype=np.float64)
    return steps, values


def _family(rows, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    prefix = name + "@"
    members = sorted({m for _, _, m, _ in rows if m.startswith(prefix)})
    return {m[len(prefix):]: _series(rows, m) for m in members}


def _at(rows, metric: str, step: int) -> float | None:
    for s, _, m, v in rows:
        if m == metric and s == step:
            return v
    return None


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
        """Whether the rule fired."""
        return self.status == "fired"

    def to_row(self, run_id: str, spike_id: int) -> dict[str, Any]:
        """The findings.parquet row (evidence and thresholds as JSON text, non-finite as strings)."""
        return {
            "run_id": run_id,
            "spike_id": int(spike_id),
            "rule": self.rule,
            "status": self.status,
            "score": float(self.score),
            "message": self.message,
            "hint": self.hint,
            "reason": self.reason,
            "evidence": dumps(self.evidence, sort_keys=True),
            "thresholds": dumps(self.thresholds, sort_keys=True),
            "primary": bool(self.primary),
        }


def inconclusive(rule: str, reason: str, **evidence: Any) -> Finding:
    """A finding that could not be decided, with the reason in words."""
    return Finding(rule, "inconclusive", 0.0, f"inconclusive: {reason}", reason=reason,
                   evidence=evidence)
