"""The chart kinds a mechanism's panel is made of, as data (drawn by `forensics.app.panels`).

Kinds: Lines (metrics through the window, limits, marks), Bars (one bar per metric), Counts
(per-snapshot counts), Decay (a sum against geometric decay), NeuronCosines (first-layer cosine
matrices from the weights), Heatmap (a metric family over steps), Row (side by side).

A spec's `panel` is a tuple of these. They name metrics of `measurements.parquet` (and, for
`Lines.recorded`, per-step columns of the `steps` view); the app turns them into Altair
charts around the spike. Labels may hold format fields: `{value}` in a `Limit`, and in `Bars`
the onset step `{onset}` and any metric's value by its name; a missing value prints as "?".
A new mechanism whose pictures fit these kinds needs no change to the app.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limit:
    """A horizontal rule: `value`, or the spike's measured `metric` × `scale` when it exists.

    Skipped when neither gives a number, and when an earlier limit of the chart has the same
    value (e.g. the momentum limit 2+2β at β = 0 equals the GD limit 2).
    """

    label: str
    value: float | None = None
    metric: str | None = None
    scale: float = 1.0


@dataclass(frozen=True)
class Lines:
    """Metrics as lines through the spike window, with limit rules and marks.

    series: metric -> legend label. recorded: per-step column of `steps` -> legend label
    (the recorder's scalars, e.g. `adam_ratio_median`). after_peak: metric holding a number
    of steps after the peak -> mark label (a vertical rule at peak + value, the peak marked
    too). from_first: start the x axis at the first measured step instead of the window.
    """

    title: str
    series: dict[str, str]
    y_title: str = ""
    log_y: bool = False
    limits: tuple[Limit, ...] = ()
    recorded: dict[str, str] = field(default_factory=dict)
    after_peak: dict[str, str] = field(default_factory=dict)
    from_first: bool = False
    height: int = 220


@dataclass(frozen=True)
class Bars:
    """One bar per metric (its measured value), drawn only when every metric was measured.

    bars: metric -> bar label (format fields: `{onset}`, metric names).
    """

    title: str
    bars: dict[str, str]
    y_title: str
    limits: tuple[Limit, ...] = ()


@dataclass(frozen=True)
class Counts:
    """Per-snapshot counts of several metrics as grouped bars; `all_zero` is shown instead
    when every count is 0."""

    title: str
    series: dict[str, str]
    all_zero: str


@dataclass(frozen=True)
class Decay:
    """A measured positive sum against geometric decay at a rate the run declares.

    Draws `metric` over the window and metric₀·factor^(t−t₀) anchored at its first point,
    factor = the runs-view column `run_field` (e.g. β₂). `reference` labels that curve
    (fields `{t0}`, `{factor}`); `rate` is appended to the title with the median of
    `rate_metric` (field `{rate}`), when measured.
    """

    title: str
    metric: str
    label: str
    run_field: str
    reference: str
    y_title: str
    rate_metric: str | None = None
    rate: str = ""


@dataclass(frozen=True)
class NeuronCosines:
    """Cosine matrices of the first-layer neurons, read from the snapshot weights, at the
    earliest step before onset and the latest after the peak among the steps where
    `steps_of` was measured; `caption` explains the picture."""

    steps_of: str
    caption: str


@dataclass(frozen=True)
class Heatmap:
    """A declared metric family `family@<row>` (e.g. one member per layer and head) as a
    step × row heat map over the measured steps."""

    title: str
    family: str
    value_title: str
    row_title: str = ""
    log: bool = False


@dataclass(frozen=True)
class Row:
    """Charts side by side, one column each."""

    charts: tuple

    def __init__(self, *charts):
        object.__setattr__(self, "charts", tuple(charts))


def metrics_of(panel) -> set[str]:
    """Every measurement metric a panel reads (for the test that they are all declared)."""
    out: set[str] = set()
    for chart in panel:
        if isinstance(chart, Row):
            out |= metrics_of(chart.charts)
        elif isinstance(chart, (Lines, Counts)):
            out |= set(chart.series) | set(getattr(chart, "after_peak", {}))
        elif isinstance(chart, Bars):
            out |= set(chart.bars)
        elif isinstance(chart, Decay):
            out |= {chart.metric} | ({chart.rate_metric} if chart.rate_metric else set())
        elif isinstance(chart, NeuronCosines):
            out.add(chart.steps_of)
        elif isinstance(chart, Heatmap):
            out.add(f"{chart.family}@*")
        for lim in getattr(chart, "limits", ()):
            if lim.metric:
                out.add(lim.metric)
    return out
