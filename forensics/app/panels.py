"""One picture per finding: draws the `panel` its rule's spec declares, on the spike page.

A spec's panel is data (`forensics.analyzer.plots`: Lines, Bars, Counts, Decay, NeuronCosines,
Heatmap, Row); this module draws each kind from the spike's frames. `draw_finding(rule, frames)`
returns False when there is nothing to draw.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from forensics.analyzer import plots
from forensics.analyzer.rules import SPECS
from forensics.app import charts, data, heatmaps, ui


@dataclass
class SpikeFrames:
    """The tables the spike page reads for one spike (the catalog's rows, as DataFrames)."""

    root: str
    run: dict            # row of the runs view
    spike: dict          # row of the spikes view
    m: pd.DataFrame      # measurements (step, engine, metric, value)
    steps: pd.DataFrame  # steps rows around the spike
    snaps: pd.DataFrame  # snapshots of the run (step, role, spike_id, path)

    def value(self, metric: str, step=None):
        """The metric's value (at `step`, else its first row), or None."""
        d = self.m[self.m["metric"] == metric]
        if step is not None:
            d = d[d["step"] == step]
        v = d["value"].iloc[0] if len(d) else None
        return None if v is None or not np.isfinite(v) else float(v)

    def has(self, *metrics) -> bool:
        """Whether any of `metrics` was measured for this spike."""
        return bool(self.m["metric"].isin(metrics).any())


def draw_finding(rule: str, frames: SpikeFrames) -> bool:
    """Draw the panel of `rule`'s spec; False when the rule is unknown or nothing was drawn."""
    spec = SPECS.get(rule)
    return draw(spec.panel, frames) if spec is not None else False


def draw(panel, frames: SpikeFrames) -> bool:
    """Draw every chart of a panel in order; True when at least one was drawn."""
    drew = False
    for chart in panel:
        drew = _DRAW[type(chart)](chart, frames) or drew
    return drew


def _row(row: plots.Row, f: SpikeFrames) -> bool:
    drew = False
    for column, chart in zip(st.columns(len(row.charts)), row.charts, strict=True):
        with column:
            drew = _DRAW[type(chart)](chart, f) or drew
    return drew


class _Missing:
    def __format__(self, spec) -> str:
        return "?"


def _label(template: str, f: SpikeFrames, **fields) -> str:
    """`template` with its fields filled: `fields`, the onset/peak step, else the measured
    value of the metric of that name; a missing one prints as "?"."""
    values = {"onset": int(f.spike["onset_step"]), "peak": int(f.spike["peak_step"]), **fields}
    for _, name, _, _ in string.Formatter().parse(template):
        if name and name not in values:
            measured = f.value(name)
            values[name] = _Missing() if measured is None else measured
    return template.format_map(values)


def _limits(limits, f: SpikeFrames) -> dict:
    out: dict[str, float] = {}
    for lim in limits:
        measured = f.value(lim.metric) if lim.metric else None
        value = measured * lim.scale if measured is not None else lim.value
        if value is None or any(abs(value - v) <= 1e-9 for v in out.values()):
            continue
        out[_label(lim.label, f, value=value)] = value
    return out


def _lines(c: plots.Lines, f: SpikeFrames) -> bool:
    s = charts.long_series(f.m, c.series)
    for col, label in c.recorded.items():
        if col in f.steps and f.steps[col].notna().any():
            per_step = f.steps[["step", col]].rename(columns={col: "value"})
            s = pd.concat([s, per_step.assign(series=label)], ignore_index=True)
    if not len(s):
        return False
    marks, lo, hi = None, None, None
    if c.after_peak:
        peak = int(f.spike["peak_step"])
        marks = {"peak": peak}
        for metric, label in c.after_peak.items():
            if (v := f.value(metric)) is not None:
                marks[f"{label} (+{v:g})"] = peak + v
        hi = max([charts.window(f.spike)[1]] + [int(v) + 2 for v in marks.values()])
    if c.from_first:
        lo = int(f.m[f.m["metric"].isin(list(c.series))]["step"].min())
    ui.show_chart(charts.window_chart(s, f.spike, limits=_limits(c.limits, f) or None, log_y=c.log_y,
                                      title=c.title, y_title=c.y_title, step_marks=marks, lo=lo,
                                      hi=hi, height=c.height))
    return True


def _bars(c: plots.Bars, f: SpikeFrames) -> bool:
    values = [f.value(metric) for metric in c.bars]
    if any(v is None for v in values):
        return False
    df = pd.DataFrame({"what": [_label(label, f) for label in c.bars.values()], c.y_title: values})
    ui.show_chart(charts.bars(df, x="what", y=c.y_title, limits=_limits(c.limits, f) or None,
                              title=c.title))
    return True


def _counts(c: plots.Counts, f: SpikeFrames) -> bool:
    s = charts.long_series(f.m, c.series)
    if not len(s):
        return False
    if (s["value"] == 0).all():
        st.caption(c.all_zero)
        return True
    s = s.assign(step=s["step"].astype(str))
    ui.show_chart(charts.bars(s, x="step", y="value", color="series", title=c.title))
    return True


def _decay(c: plots.Decay, f: SpikeFrames) -> bool:
    factor = f.run.get(c.run_field)
    v = f.m[f.m["metric"] == c.metric][["step", "value"]].dropna().sort_values("step")
    lo, hi = charts.window(f.spike)
    v = v[(v["step"] >= lo) & (v["step"] <= hi) & (v["value"] > 0)]
    if len(v) < 2 or factor is None or not np.isfinite(factor):
        return False
    t0, v0 = int(v["step"].iloc[0]), float(v["value"].iloc[0])
    ref = pd.DataFrame({"step": v["step"], "value": v0 * factor ** (v["step"] - t0),
                        "series": c.reference.format(t0=t0, factor=factor)})
    s = pd.concat([v.assign(series=c.label), ref], ignore_index=True)
    title = c.title
    if c.rate_metric:
        rate = f.m[f.m["metric"] == c.rate_metric]["value"].median()
        title += c.rate.format(rate=rate) if np.isfinite(rate) else ""
    ui.show_chart(charts.window_chart(s, f.spike, log_y=True, y_title=c.y_title, title=title))
    return True


def _neuron_cosines(c: plots.NeuronCosines, f: SpikeFrames) -> bool:
    steps = sorted(f.m[f.m["metric"] == c.steps_of]["step"].unique())
    before = [s for s in steps if s < int(f.spike["onset_step"])]
    after = [s for s in steps if s > int(f.spike["peak_step"])]
    if not (before and after):
        return False
    pair = (int(before[0]), int(after[-1]))
    mats = data.condensation_matrices(f.run["path"], pair)
    if mats is None:
        return False
    ui.show_chart(heatmaps.neuron_cosine_heatmaps(mats[pair[0]], mats[pair[1]], steps=pair))
    st.caption(c.caption)
    return True


def _heatmap(c: plots.Heatmap, f: SpikeFrames) -> bool:
    prefix = f"{c.family}@"
    d = f.m[f.m["metric"].str.startswith(prefix)]
    if not len(d):
        return False
    rows = d.assign(row=d["metric"].str.slice(len(prefix)))[["step", "row", "value"]]
    ui.show_chart(heatmaps.step_heatmap(rows, title=c.title, value_title=c.value_title,
                                        row_title=c.row_title, log=c.log))
    return True


_DRAW = {plots.Lines: _lines, plots.Bars: _bars, plots.Counts: _counts, plots.Decay: _decay,
         plots.NeuronCosines: _neuron_cosines, plots.Heatmap: _heatmap,
         plots.Row: _row}
