"""Altair charts of runs and spikes, as pure functions of DataFrames (testable without Streamlit).

Every chart takes the catalog's rows (steps, spikes, the long `measurements` table) and returns
an Altair chart; nothing here reads files or calls Streamlit. Named selections: `zoom` (interval
on the overview strip, drives the x axis of the loss and scalar panels) and `spike_pick` (click
a spike mark on the loss curve).
"""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from forensics.analyzer.mechanisms import OTHER_VERDICTS
from forensics.analyzer.rules import SPECS

# each mechanism's colour comes from its spec; the two verdicts that are not mechanisms follow
VERDICT_COLORS = {**{name: spec.colour for name, spec in SPECS.items()},
                  **{v: colour for v, (_, colour) in OTHER_VERDICTS.items()}, "not analyzed": "#b0b0b0"}
VERDICT_SCALE = alt.Scale(domain=list(VERDICT_COLORS), range=list(VERDICT_COLORS.values()))
SCALAR_LABELS = {
    "lr": "lr", "grad_norm": "‖g‖", "update_norm": "‖Δθ‖", "param_norm": "‖θ‖",
    "adam_ratio_median": "g²/v̂ median", "adam_ratio_frac_small": "share g²/v̂ < 0.1",
    "probe_loss": "probe loss",
}
MAX_POINTS = 5000
STEP_AXIS = alt.Axis(format="d")


def finite(df: pd.DataFrame, cols) -> pd.DataFrame:
    """Copy with ±inf in `cols` turned into NaN (Vega-Lite cannot carry them)."""
    df = df.copy()
    for c in cols:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").replace([np.inf, -np.inf], np.nan)
    return df


def thin(df: pd.DataFrame, col: str, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """At most ~max_points rows, keeping each bucket's lowest and highest `col` (spikes survive)."""
    if len(df) <= max_points:
        return df
    bucket = np.arange(len(df)) // math.ceil(2 * len(df) / max_points)
    v = df[col].fillna(-np.inf)
    keep = set(v.groupby(bucket).idxmax()) | set(df[col].fillna(np.inf).groupby(bucket).idxmin())
    return df.loc[sorted(keep)]


def _w(width) -> dict:
    """Width property only when given in pixels: left out, st.altair_chart(width="stretch") fits it."""
    return {"width": width} if isinstance(width, int) else {}


def _y(field: str, title: str, log: bool, **kw) -> alt.Y:
    scale = alt.Scale(type="log" if log else "linear", zero=False)
    return alt.Y(f"{field}:Q", title=title, scale=scale, **kw)


# --- the runs page ---------------------------------------------------------------------------

def run_overview(steps: pd.DataFrame, spikes: pd.DataFrame, *, log_scale: bool = True,
                 scalars=("lr", "grad_norm", "update_norm", "adam_ratio_median"),
                 width: int = 820) -> alt.VConcatChart:
    """Loss curve with spikes marked and coloured by verdict, per-step scalars below on the same
    x axis, and an overview strip at the bottom whose brush (`zoom`) zooms all of them. `width`
    in pixels: Vega-Lite cannot fit a concatenated chart to its container."""
    df = thin(finite(steps, ["loss", *SCALAR_LABELS]), "loss")
    bad = steps[~np.isfinite(pd.to_numeric(steps["loss"], errors="coerce"))][["step"]]
    if log_scale:
        df = df.assign(loss=df["loss"].where(df["loss"] > 0))
    zoom = alt.selection_interval(name="zoom", encodings=["x"])
    x_zoom = alt.X("step:Q", title=None, axis=STEP_AXIS, scale=alt.Scale(domain=zoom, nice=False))

    sp = spikes.copy()
    sp["end_or_peak"] = sp["end_step"].fillna(sp["peak_step"]).astype(float)
    sp["peak_loss"] = pd.to_numeric(sp["peak_loss"], errors="coerce").replace([np.inf, -np.inf], np.nan)
    sp["peak_loss"] = sp["peak_loss"].fillna(df["loss"].max())
    sp["label"] = [f"spike {i}: {v}" for i, v in zip(sp["spike_id"], sp["verdict"], strict=True)]
    pick = alt.selection_point(name="spike_pick", fields=["run_id", "spike_id"], on="click")

    base = alt.Chart(df).properties(width=width)
    line = base.mark_line(clip=True, strokeWidth=1.2, color="#1f77b4").encode(
        x=x_zoom, y=_y("loss", "loss" + (" (log)" if log_scale else ""), log_scale),
        tooltip=["step:Q", alt.Tooltip("loss:Q", format=".4g")])
    spans = alt.Chart(sp).mark_rect(opacity=0.18, clip=True).encode(
        x=alt.X("onset_step:Q", scale=alt.Scale(domain=zoom, nice=False)), x2="end_or_peak:Q",
        color=alt.Color("verdict:N", scale=VERDICT_SCALE, title="verdict"))
    marks = alt.Chart(sp).mark_point(filled=True, size=140, clip=True, cursor="pointer").encode(
        x=alt.X("peak_step:Q", scale=alt.Scale(domain=zoom, nice=False)),
        y=_y("peak_loss", "", log_scale),
        color=alt.Color("verdict:N", scale=VERDICT_SCALE, title="verdict"),
        stroke=alt.value("black"),
        strokeWidth=alt.condition(pick, alt.value(2), alt.value(0.5)),
        tooltip=["spike_id:Q", "verdict:N", "onset_step:Q", "peak_step:Q", "end_step:Q",
                 alt.Tooltip("magnitude:Q", format=".3g"),
                 alt.Tooltip("sub_peaks:Q", title="peaks in episode")],
    ).add_params(pick)
    layers = [spans, line, marks]
    if len(bad):
        layers.append(alt.Chart(bad.assign(what="non-finite loss")).mark_rule(
            color="#e377c2", strokeDash=[2, 2], clip=True).encode(
            x=alt.X("step:Q", scale=alt.Scale(domain=zoom, nice=False)), tooltip=["step:Q", "what:N"]))
    detail = alt.layer(*layers).properties(height=260, width=width,
                                           title="loss — click a spike to open it")

    panels = []
    for col in scalars:
        if col not in df or df[col].notna().sum() == 0:
            continue
        d = df[["step", col]].dropna()
        log = log_scale and bool((d[col] > 0).all())
        panels.append(alt.Chart(d).mark_line(clip=True, strokeWidth=1, color="#555").encode(
            x=x_zoom, y=_y(col, SCALAR_LABELS.get(col, col), log, axis=alt.Axis(tickCount=3)),
            tooltip=["step:Q", alt.Tooltip(f"{col}:Q", format=".4g")],
        ).properties(height=70, width=width))

    overview = alt.Chart(df).mark_line(color="#1f77b4").encode(
        x=alt.X("step:Q", title="step — drag on this strip to zoom, double-click to reset", axis=STEP_AXIS),
        y=_y("loss", "", log_scale, axis=None),
    ).add_params(zoom).properties(height=45, width=width)
    return alt.vconcat(detail, *panels, overview, spacing=6).resolve_scale(color="shared")


# --- the spike page --------------------------------------------------------------------------

def window(spike: dict, pad: int | None = None) -> tuple[int, int]:
    """Steps [lo, hi] around a spike: onset − pad … end + pad, pad ≥ 6 and ≥ the spike's length."""
    onset, peak = int(spike["onset_step"]), int(spike["peak_step"])
    end = spike.get("end_step")
    end = peak if end is None or pd.isna(end) else int(end)
    pad = pad if pad is not None else max(6, end - onset)
    return onset - pad, end + pad


def _spike_layers(spike: dict, domain=None) -> list:
    end = spike.get("end_step")
    end = spike["peak_step"] if end is None or pd.isna(end) else end
    band = pd.DataFrame({"onset": [spike["onset_step"]], "end": [end], "what": ["spike (onset → end)"]})
    scale = alt.Scale(domain=list(domain), nice=False) if domain else alt.Scale(nice=False, zero=False)
    rules = pd.DataFrame({"step": [spike["onset_step"], spike["peak_step"]],
                          "event": ["onset", "peak"]})
    return [alt.Chart(band).mark_rect(opacity=0.08, color="#d62728").encode(
                x=alt.X("onset:Q", title="step", axis=STEP_AXIS, scale=scale), x2="end:Q",
                tooltip=["what:N"]),
            alt.Chart(rules).mark_rule(strokeDash=[4, 3], color="#999").encode(
                x=alt.X("step:Q", title="step", axis=STEP_AXIS, scale=scale), tooltip=["event:N", "step:Q"])]


def loss_window(steps: pd.DataFrame, spike: dict, *, snapshot_steps=(), log_scale=False,
                width=None) -> alt.LayerChart:
    """The recorded loss around a spike, the spike shaded, snapshot steps ticked at the bottom."""
    df = finite(steps, ["loss"])
    if log_scale:
        df = df.assign(loss=df["loss"].where(df["loss"] > 0))
    line = alt.Chart(df).mark_line(point=alt.OverlayMarkDef(size=18), color="#1f77b4").encode(
        x=alt.X("step:Q", title="step", axis=STEP_AXIS, scale=alt.Scale(nice=False, zero=False)),
        y=_y("loss", "loss", log_scale), tooltip=["step:Q", alt.Tooltip("loss:Q", format=".4g")])
    layers = _spike_layers(spike) + [line]
    snaps = pd.DataFrame({"step": [s for s in snapshot_steps if df["step"].min() <= s <= df["step"].max()]})
    if len(snaps):
        layers.append(alt.Chart(snaps.assign(what="snapshot")).mark_tick(
            color="#2ca02c", thickness=2, size=10).encode(
            x="step:Q", y=alt.value(250), tooltip=["what:N", "step:Q"]))
    return alt.layer(*layers).properties(height=260, **_w(width),
                                         title="loss around the spike (green ticks: snapshots)")


def long_series(m: pd.DataFrame, names: dict) -> pd.DataFrame:
    """Rows (step, series, value) of measurements `names` = {metric: label}, finite values only."""
    d = m[m["metric"].isin(list(names))].copy()
    d["series"] = d["metric"].map(names)
    d = finite(d, ["value"]).dropna(subset=["value"])
    return d[["step", "series", "value"]]


def window_chart(series: pd.DataFrame, spike: dict, *, limits: dict | None = None,
                 log_y: bool = False, title: str = "", y_title: str = "",
                 step_marks: dict | None = None, lo: int | None = None, hi: int | None = None,
                 width=None, height: int = 220) -> alt.LayerChart:
    """Lines of `series` (step, series, value) through the spike window, with horizontal `limits`
    {label: value} drawn as red rules, optional vertical `step_marks` {label: step}. Points
    measured before the window (reference steps) become dashed horizontal rules."""
    lo_, hi_ = window(spike)
    lo = lo_ if lo is None else lo
    hi = hi_ if hi is None else hi
    df = series.copy()
    if log_y:
        df = df[df["value"] > 0]
    ref = df[df["step"] < lo].sort_values("step").groupby("series").tail(1)
    df = df[(df["step"] >= lo) & (df["step"] <= hi)]
    x = alt.X("step:Q", scale=alt.Scale(domain=[lo, hi], nice=False))
    color = alt.Color("series:N", title=None, scale=alt.Scale(scheme="category10"),
                      legend=alt.Legend(orient="bottom", labelLimit=400))
    layers = _spike_layers(spike, (lo, hi))
    layers.append(alt.Chart(df).mark_line(point=True, clip=True).encode(
        x=x, y=_y("value", y_title, log_y), color=color,
        tooltip=["series:N", "step:Q", alt.Tooltip("value:Q", format=".4g")]))
    if len(ref):
        ref = ref.assign(label=[f"{s} at reference step {int(t)}"
                                for s, t in zip(ref["series"], ref["step"], strict=True)])
        layers.append(alt.Chart(ref).mark_rule(strokeDash=[1, 3], opacity=0.8).encode(
            y="value:Q", color=color, tooltip=["label:N", alt.Tooltip("value:Q", format=".4g")]))
    if limits:
        lim = pd.DataFrame({"limit": list(limits), "value": [float(v) for v in limits.values()]})
        lim = lim[np.isfinite(lim["value"]) & ((lim["value"] > 0) | (not log_y))]
        layers.append(alt.Chart(lim).mark_rule(color="#d62728", strokeDash=[6, 3]).encode(
            y="value:Q", tooltip=["limit:N", "value:Q"]))
        layers.append(alt.Chart(lim).mark_text(align="left", dx=4, dy=-6, color="#d62728").encode(
            x=alt.value(0), y="value:Q", text="limit:N"))
    if step_marks:
        sm = pd.DataFrame({"mark": list(step_marks), "step": [float(v) for v in step_marks.values()]})
        sm = sm[np.isfinite(sm["step"])]
        layers.append(alt.Chart(sm).mark_rule(color="#2ca02c").encode(
            x=alt.X("step:Q", title="step", axis=STEP_AXIS, scale=alt.Scale(domain=[lo, hi], nice=False)),
            tooltip=["mark:N", "step:Q"]))
        layers.append(alt.Chart(sm).mark_text(angle=270, align="left", dx=4, dy=-4, color="#2ca02c").encode(
            x="step:Q", y=alt.value(height - 10), text="mark:N"))
    return alt.layer(*layers).properties(title=title, height=height, **_w(width))


def bars(df: pd.DataFrame, *, x: str, y: str, title: str, limits: dict | None = None,
         color: str | None = None, width=None, height: int = 200) -> alt.LayerChart:
    """Bars of `y` by `x` (e.g. the spike batch's loss against its neighbours), with limit rules."""
    enc = {"x": alt.X(f"{x}:N", title=None, sort=None, axis=alt.Axis(labelAngle=0, labelLimit=300)),
           "y": alt.Y(f"{y}:Q", title=y), "tooltip": [f"{x}:N", alt.Tooltip(f"{y}:Q", format=".4g")]}
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=None)
    layers = [alt.Chart(df).mark_bar().encode(**enc)]
    if limits:
        lim = pd.DataFrame({"limit": list(limits), "value": [float(v) for v in limits.values()]})
        layers.append(alt.Chart(lim).mark_rule(color="#d62728", strokeDash=[6, 3]).encode(
            y="value:Q", tooltip=["limit:N", "value:Q"]))
        layers.append(alt.Chart(lim).mark_text(align="right", dy=-6, color="#d62728").encode(
            x=alt.value(width if isinstance(width, int) else 400), y="value:Q", text="limit:N"))
    return alt.layer(*layers).properties(title=title, height=height, **_w(width))


# --- compare and SQL -------------------------------------------------------------------------

def overlay(df: pd.DataFrame, *, x: str, y: str, color: str, log_y: bool = False,
            title: str = "", x_title: str | None = None, width=None, height: int = 260) -> alt.Chart:
    """Lines of several runs or spikes on one axis (`color` tells them apart)."""
    d = finite(df, [y]).dropna(subset=[y])
    if log_y:
        d = d[d[y] > 0]
    return alt.Chart(d).mark_line(clip=True).encode(
        x=alt.X(f"{x}:Q", title=x_title or x), y=_y(y, y, log_y),
        color=alt.Color(f"{color}:N", title=None, scale=alt.Scale(scheme="category10"),
                        legend=alt.Legend(orient="bottom", labelLimit=400)),
        tooltip=[f"{color}:N", f"{x}:Q", alt.Tooltip(f"{y}:Q", format=".4g")],
    ).properties(title=title, height=height, **_w(width))


def sql_chart(df: pd.DataFrame, *, log_y: bool = False) -> alt.Chart | None:
    """Numeric columns of a query result against its `step` column, or None if there is none."""
    if "step" not in df.columns or not len(df):
        return None
    numeric = [c for c in df.columns if c not in ("step", "spike_id") and pd.api.types.is_numeric_dtype(df[c])
               and not pd.api.types.is_bool_dtype(df[c])]
    if not numeric:
        return None
    keys = ["step"] + (["run_id"] if "run_id" in df.columns else [])
    long = df[keys + numeric].melt(id_vars=keys, var_name="column", value_name="value")
    if "run_id" in keys:
        long["series"] = long["run_id"].astype(str) + " · " + long["column"]
    else:
        long["series"] = long["column"]
    long["step"] = pd.to_numeric(long["step"], errors="coerce")
    return overlay(long.drop(columns=["column"]), x="step", y="value", color="series", log_y=log_y,
                   title="result against step")
