"""Altair heat maps, as pure functions of arrays and DataFrames: the first-layer neuron cosine
matrices, and a family of metrics over steps (one row per member, e.g. per layer and head)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from forensics.app.charts import STEP_AXIS, finite


def cosine_matrix(matrix, *, title: str, width: int = 260) -> alt.Chart:
    """An (m, m) cosine matrix as a red-blue heatmap on [−1, 1]."""
    mat = np.asarray(matrix, dtype=float)
    m = mat.shape[0]
    i, j = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    df = pd.DataFrame({"i": i.ravel(), "j": j.ravel(), "cos": mat.ravel()})
    return alt.Chart(df).mark_rect().encode(
        x=alt.X("j:O", axis=None), y=alt.Y("i:O", axis=None),
        color=alt.Color("cos:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True),
                        title="cos"),
        tooltip=["i:O", "j:O", alt.Tooltip("cos:Q", format=".2f")],
    ).properties(title=title, width=width, height=width)


def neuron_cosine_heatmaps(before, after, *, steps: tuple[int, int]) -> alt.HConcatChart:
    """Two cosine matrices side by side on one colour scale: before and after the spike."""
    return alt.hconcat(cosine_matrix(before, title=f"before: step {steps[0]}"),
                       cosine_matrix(after, title=f"after: step {steps[1]}")).resolve_scale(color="shared")


def step_heatmap(rows: pd.DataFrame, *, title: str, value_title: str, row_title: str = "",
                 log: bool = False, width=None, height: int = 220) -> alt.Chart:
    """Rows (step, row, value) as a step × row heat map (finite values; positive ones on a
    log colour scale when `log`)."""
    d = finite(rows, ["value"]).dropna(subset=["value"])
    if log:
        d = d[d["value"] > 0]
    scale = alt.Scale(type="log" if log else "linear", scheme="viridis")
    return alt.Chart(d).mark_rect().encode(
        x=alt.X("step:O", title="step", axis=STEP_AXIS),
        y=alt.Y("row:N", title=row_title or None, sort=None),
        color=alt.Color("value:Q", title=value_title, scale=scale),
        tooltip=["step:O", "row:N", alt.Tooltip("value:Q", format=".4g")],
    ).properties(title=title, height=height, **({"width": width} if isinstance(width, int) else {}))
