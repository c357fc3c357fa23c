"""One picture per rule: what each finding's evidence looks like on the spike page.

`PANELS[rule](ctx)` draws the charts behind a finding from the spike's measurements (and, for
condensation, the first-layer weights of two snapshots); it returns False when there is nothing
to draw. `ctx` is a `SpikeContext`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from forensics.app import charts, data, ui


@dataclass
class SpikeContext:
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
        return bool(self.m["metric"].isin(metrics).any())


def _show(chart) -> None:
    ui.show_chart(chart)


def sharpness(ctx: SpikeContext) -> bool:
    if not ctx.has("eta_lambda_max"):
        return False
    s = charts.long_series(ctx.m, {"eta_lambda_max": "η·λ_max", "eta_grad_curvature": "η·gᵀHg/‖g‖²"})
    limits = {"2 (GD)": ctx.value("limit_gd") or 2.0}
    mom = ctx.value("limit_momentum")
    if mom is not None and abs(mom - limits["2 (GD)"]) > 1e-9:
        limits[f"{mom:g} = 2+2β (momentum)"] = mom
    _show(charts.window_chart(s, ctx.spike, limits=limits, title="η·λ_max against its stability limit",
                              y_title="η × curvature"))
    return True


def adam_beta2_lag(ctx: SpikeContext) -> bool:
    drew = False
    if ctx.has("eta_pre_lambda_max"):
        s = charts.long_series(ctx.m, {"eta_pre_lambda_max": "η·λ_max(P⁻¹H)",
                                       "eta_pre_grad_curvature": "η·gᵀP⁻¹Hg/‖g‖²",
                                       "eta_lambda_max": "η·λ_max (plain, no limit for Adam)"})
        cohen = ctx.value("limit_cohen") or 38.0
        limits = {"2 (seed)": ctx.value("limit_seed") or 2.0, f"{cohen:g} (Cohen)": cohen}
        _show(charts.window_chart(s, ctx.spike, limits=limits, log_y=True, y_title="η × curvature (log)",
                                  title="preconditioned sharpness against 2 (seed) and 38 (Cohen)"))
        drew = True
    ratio = charts.long_series(ctx.m, {"ratio_median": "g²/v̂ median (snapshot)"})
    if "adam_ratio_median" in ctx.steps and ctx.steps["adam_ratio_median"].notna().any():
        per_step = ctx.steps[["step", "adam_ratio_median"]].rename(columns={"adam_ratio_median": "value"})
        ratio = pd.concat([ratio, per_step.assign(series="g²/v̂ median (per step)")], ignore_index=True)
    if len(ratio):
        c1, c2 = st.columns(2)
        with c1:
            _show(charts.window_chart(ratio, ctx.spike, limits={"0.1": 0.1}, log_y=True,
                                      y_title="g²/v̂ (log)", title="g²/v̂: the gradient against v's memory"))
        with c2:
            drew = _v_decay(ctx) or drew
        drew = True
    return drew


def _v_decay(ctx: SpikeContext) -> bool:
    """Σv over the window against Σv₀·β₂^(t−t₀) anchored at the first window step."""
    beta2 = ctx.run.get("beta2")
    v = ctx.m[ctx.m["metric"] == "v_sum"][["step", "value"]].dropna().sort_values("step")
    lo, hi = charts.window(ctx.spike)
    v = v[(v["step"] >= lo) & (v["step"] <= hi) & (v["value"] > 0)]
    if len(v) < 2 or beta2 is None or not np.isfinite(beta2):
        return False
    t0, v0 = int(v["step"].iloc[0]), float(v["value"].iloc[0])
    ref = pd.DataFrame({"step": v["step"], "value": v0 * beta2 ** (v["step"] - t0),
                        "series": f"Σv₀·β₂^(t−{t0}), β₂ = {beta2:g}"})
    s = pd.concat([v.assign(series="Σv (second moment)"), ref], ignore_index=True)
    rate = ctx.m[ctx.m["metric"] == "v_decay_vs_beta2"]["value"].median()
    title = "v decays like β₂^t" + (f" (rate {rate:.2f}× β₂'s)" if np.isfinite(rate) else "")
    _show(charts.window_chart(s, ctx.spike, log_y=True, y_title="Σv (log)", title=title))
    return True


def catapult(ctx: SpikeContext) -> bool:
    if not ctx.has("pl_top", "lr_over_eta_crit"):
        return False
    c1, c2 = st.columns(2)
    with c1:
        s = charts.long_series(ctx.m, {"pl_top": "PL_s (top-s NTK directions)", "pl_rest": "PL_s^⊥ (the rest)"})
        _show(charts.window_chart(s, ctx.spike, log_y=True, y_title="loss share (log)",
                                  title="where the loss lives: PL_s vs PL_s^⊥"))
    with c2:
        s = charts.long_series(ctx.m, {"lr_over_eta_crit": "η / η_crit"})
        _show(charts.window_chart(s, ctx.spike, limits={"1 (critical lr)": 1.0}, y_title="η / η_crit",
                                  title="lr against the NTK's critical lr 2n/λ_max(K)"))
    return True


def low_frequency(ctx: SpikeContext) -> bool:
    if not ctx.has("e_low", "e_high"):
        return False
    s = charts.long_series(ctx.m, {"e_low": "low-frequency error", "e_high": "high-frequency error"})
    peak = int(ctx.spike["peak_step"])
    marks = {"peak": peak}
    rl, rh = ctx.value("recovery_low"), ctx.value("recovery_high")
    if rl is not None:
        marks[f"low recovered (+{rl:g})"] = peak + rl
    if rh is not None:
        marks[f"high recovered (+{rh:g})"] = peak + rh
    lo, hi = charts.window(ctx.spike)
    hi = max([hi] + [int(v) + 2 for v in marks.values()])
    _show(charts.window_chart(s, ctx.spike, step_marks=marks, log_y=True, hi=hi, y_title="relative error (log)",
                              title="low- vs high-frequency error from peak to recovery"))
    return True


def condensation(ctx: SpikeContext) -> bool:
    steps = sorted(ctx.m[ctx.m["metric"] == "condensation_index"]["step"].unique())
    onset = int(ctx.spike["onset_step"])
    before = [s for s in steps if s < onset]
    after = [s for s in steps if s > int(ctx.spike["peak_step"])]
    drew = False
    if before and after:
        pair = (int(before[0]), int(after[-1]))
        mats = data.condensation_matrices(ctx.run["path"], pair)
        if mats is not None:
            _show(charts.condensation_heatmaps(mats[pair[0]], mats[pair[1]], steps=pair))
            st.caption("cosine similarity of first-layer neurons [w; b]; neurons ordered by the "
                       "'after' matrix's leading eigenvector, so aligned groups show as blocks")
            drew = True
    if ctx.has("condensation_share"):
        s = charts.long_series(ctx.m, {"condensation_share": "share of aligned pairs (|cos| > 0.95)",
                                       "condensation_index": "λ_max(C)/m"})
        _show(charts.window_chart(s, ctx.spike, y_title="index", title="condensation indices",
                                  lo=int(min(steps)) if steps else None, height=180))
        drew = True
    return drew


def data_rule(ctx: SpikeContext) -> bool:
    batch, neigh = ctx.value("batch_loss"), ctx.value("neighbor_loss_median")
    if batch is None or neigh is None:
        return False
    n = ctx.value("neighbor_count")
    df = pd.DataFrame({"batch": [f"spike batch (step {int(ctx.spike['onset_step'])})",
                                 f"neighbours (median of {int(n) if n else '?'})"],
                       "loss at onset weights": [batch, neigh]})
    _show(charts.bars(df, x="batch", y="loss at onset weights", limits={"3× neighbours": 3 * neigh},
                      title="the spike batch's loss against its neighbours, at the onset weights"))
    return True


def numerical(ctx: SpikeContext) -> bool:
    names = {"nonfinite_loss": "loss", "nonfinite_grad": "gradients", "nonfinite_param": "weights",
             "nonfinite_state": "optimizer state"}
    s = charts.long_series(ctx.m, names)
    if not len(s):
        return False
    if (s["value"] == 0).all():
        st.caption("every snapshot of this spike is finite (0 non-finite values)")
        return True
    s = s.assign(step=s["step"].astype(str))
    _show(charts.bars(s, x="step", y="value", color="series", title="non-finite values per snapshot"))
    return True


PANELS = {"sharpness": sharpness, "adam_beta2_lag": adam_beta2_lag, "catapult": catapult,
          "low_frequency": low_frequency, "condensation": condensation, "data": data_rule,
          "numerical": numerical}
