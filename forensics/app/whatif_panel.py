"""The spike page's "What if" panel: the stored `forensics whatif` replays of a spike as overlaid
curves (recorded against each change) and one sentence per change."""

from __future__ import annotations

import json
import math

import pandas as pd
import streamlit as st

from forensics.app import charts, data, ui


def rows(root: str, run_id: str, spike_id: int) -> pd.DataFrame:
    """The whatif rows of one spike (JSON columns as text)."""
    sql = ("SELECT change, reproduced, replay_error, tolerance, peak_ratio, recorded_peak_ratio, "
           "spike_gone, recover_steps, curve, CAST(steps AS VARCHAR) AS steps, "
           "CAST(curve_values AS VARCHAR) AS curve_values, CAST(recorded AS VARCHAR) AS recorded, "
           "diagnosis FROM whatif WHERE run_id = ? AND spike_id = ? ORDER BY change")
    return data.run_sql(root, sql, [run_id, int(spike_id)])


def curves(df: pd.DataFrame) -> pd.DataFrame:
    """Long frame (step, loss, series): the recorded curve once, then each change's replayed curve."""
    out = []
    for r in df.to_dict("records"):
        steps = json.loads(r["steps"] or "[]")
        if r["change"] == "none":
            series, values = "recorded", json.loads(r["recorded"] or "[]")
        else:
            series, values = f"with {r['change']}", json.loads(r["curve_values"] or "[]")
        for t, v in zip(steps, values, strict=True):
            v = float(v) if isinstance(v, str) else v
            if v is not None and math.isfinite(v):
                out.append({"step": t, "loss": v, "series": series})
    return pd.DataFrame(out, columns=["step", "loss", "series"])


def show(root: str, run_id: str, spike_id: int, run_path: str = "RUN") -> None:
    """Draw the panel, or a one-line hint when the spike was never replayed."""
    from forensics.whatif.text import sentence

    df = rows(root, run_id, spike_id)
    st.markdown("### What if")
    if not len(df):
        st.caption(f"not replayed: `forensics whatif {run_path} --spike {spike_id}` tests the hints "
                   "by replaying the spike's window with each change")
        return
    check = df[df["change"] == "none"]
    if len(check) and not bool(check.iloc[0]["reproduced"]):
        st.warning(check.iloc[0]["diagnosis"])
        return
    if len(check):
        r = check.iloc[0]
        st.caption(f"the no-change replay reproduces the recording: error {r['replay_error']:.2g} ≤ "
                   f"{r['tolerance']:g}; measured on the "
                   f"{'training' if r['curve'] == 'loss' else 'reference'} loss")
    for r in df[df["change"] != "none"].to_dict("records"):
        recover = None if pd.isna(r["recover_steps"]) else int(r["recover_steps"])
        text = sentence(r["change"], r["peak_ratio"], r["recorded_peak_ratio"], bool(r["spike_gone"]),
                        recover)
        (st.success if r["spike_gone"] else st.info)(text)
    long = curves(df)
    if len(long):
        ui.show_chart(charts.overlay(long, x="step", y="loss", color="series", log_y=True,
                                     title="recorded loss against each counterfactual replay"))
