"""The compare page: every run in one table, then two runs (or two spikes) side by side.

The table is seed 001's comparison from the project's own numbers: per run, its batch size, its
spike count, and at its last baseline snapshot the AGOP alignment (with the task's true AGOP),
λ_max, the condensation index and the loss (`forensics.analyzer.baselines`, run-level rows of
measurements.parquet), with the final recorded loss. One overlay chart then puts a per-step
scalar of two runs on one axis (aligned on the spike onsets when spikes are chosen); below,
each side shows its loss curve or its spike's verdict and evidence.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from forensics.app import charts, data, ui
from forensics.app.pages import spike as spike_page

NO_SPIKE = -1
METRICS = ("loss", "grad_norm", "update_norm", "adam_ratio_median", "adam_ratio_frac_small", "lr",
           "param_norm")


def _defaults(ids: list[str]) -> tuple[str, str]:
    a = next((r for r in ids if "adam_beta2" in r), ids[0])
    b = next((r for r in ids if "control" in r and r != a), next((r for r in ids if r != a), a))
    return a, b


def _side(root: str, col, side: str, default: str, ids: list[str]):
    if f"cmp_run_{side}" not in st.session_state:
        st.session_state[f"cmp_run_{side}"] = st.query_params.get(f"run_{side.lower()}", default)
        if st.session_state[f"cmp_run_{side}"] not in ids:
            st.session_state[f"cmp_run_{side}"] = default
    run_id = col.selectbox(f"Run {side}", ids, key=f"cmp_run_{side}")
    spikes = data.spikes(root, run_id)
    options = [NO_SPIKE] + [int(s) for s in spikes["spike_id"]]
    if st.session_state.get(f"cmp_spike_{side}") not in options:
        st.session_state[f"cmp_spike_{side}"] = options[1] if len(options) > 1 else NO_SPIKE
    sp = col.selectbox(f"Spike {side}", options, key=f"cmp_spike_{side}",
                       format_func=lambda s: "whole run" if s == NO_SPIKE else
                       f"spike {s} · onset {spikes[spikes['spike_id'] == s]['onset_step'].iloc[0]}")
    st.query_params[f"run_{side.lower()}"] = run_id
    row = None if sp == NO_SPIKE else spikes[spikes["spike_id"] == sp].iloc[0].to_dict()
    return run_id, row


def render(root: str) -> None:
    """The compare page: the all-runs table, then run (or spike) A against B."""
    st.title("Compare")
    runs = data.runs(root)
    if not len(runs):
        ui.empty_folder_hint(root)
        return
    side_by_side(root, runs)
    ids = list(runs["run_id"])
    da, db = _defaults(ids)
    ca, cb = st.columns(2)
    a, spike_a = _side(root, ca, "A", da, ids)
    b, spike_b = _side(root, cb, "B", db, ids)

    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    metric = c1.selectbox("compare", METRICS, key="cmp_metric",
                          format_func=lambda s: charts.SCALAR_LABELS.get(s, s))
    log_y = c2.toggle("log scale", value=True, key="cmp_log")
    frames = []
    for side, run_id, sp in (("A", a, spike_a), ("B", b, spike_b)):
        if sp is not None:
            lo, hi = charts.window(sp)
            d = data.steps(root, run_id, lo, hi)
            d = d.assign(x=d["step"] - int(sp["onset_step"]),
                         who=f"{side}: {run_id} · spike {sp['spike_id']}")
        else:
            d = data.steps(root, run_id)
            d = d.assign(x=d["step"], who=f"{side}: {run_id}")
        if metric in d:
            frames.append(charts.thin(d[["x", "who", metric]], metric))
    aligned = spike_a is not None or spike_b is not None
    if frames:
        df = pd.concat(frames, ignore_index=True)
        ui.show_chart(charts.overlay(df, x="x", y=metric, color="who", log_y=log_y,
                                       x_title="steps from onset" if aligned else "step",
                                       title=f"{charts.SCALAR_LABELS.get(metric, metric)}: A against B"))

    left, right = st.columns(2, gap="large")
    for col, run_id, sp in ((left, a, spike_a), (right, b, spike_b)):
        with col:
            info = runs[runs["run_id"] == run_id].iloc[0].to_dict()
            if sp is not None:
                spike_page.show_spike(root, info, sp, compact=True)
            else:
                _run_summary(root, info)


def _run_summary(root: str, info: dict) -> None:
    st.subheader(info["run_id"])
    st.caption(f"{info.get('optimizer_name')}, lr {info.get('lr')}, β₂ {info.get('beta2')}, "
               f"{info.get('num_steps')} steps, {info.get('num_spikes')} spike(s)")
    steps = data.steps(root, info["run_id"])
    spikes = data.spikes(root, info["run_id"])
    if len(steps):
        # a concatenated chart keeps its pixel width (width="stretch" stretched it past the column)
        st.altair_chart(charts.run_overview(steps, spikes, scalars=("adam_ratio_median",), width=420)
                        .configure_legend(orient="bottom", columns=3), width="content")
    if not len(spikes):
        st.success("no spikes", icon=":material/check_circle:")


BASELINE_COLUMNS = {"agop_alignment": "AGOP alignment (true AGOP)",
                    "agop_alignment_final": "AGOP alignment (vs final)", "lambda_max": "λ_max",
                    "condensation_index": "condensation index", "loss": "baseline batch loss"}


def side_by_side_table(root: str, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: batch size, spikes, the last baseline's run-level numbers, final loss."""
    base = data.run_sql(root, "SELECT run_id, step, metric, value FROM measurements "
                              "WHERE spike_id = -1 AND engine = 'baselines'")
    final = data.run_sql(root, "SELECT run_id, arg_max(loss, step) AS final_loss FROM steps "
                               "WHERE isfinite(loss) GROUP BY run_id")
    table = runs[["run_id", "num_spikes"]].rename(columns={"num_spikes": "spikes"}).copy()
    table.insert(1, "batch size", [_batch_size(p) for p in runs["path"]])
    if len(base):
        last = base.sort_values("step").groupby(["run_id", "metric"])["value"].last().unstack()
        for metric, label in BASELINE_COLUMNS.items():
            if metric in last:
                table[label] = table["run_id"].map(last[metric])
    table["final loss"] = table["run_id"].map(dict(zip(final["run_id"], final["final_loss"], strict=True)))
    return table


def side_by_side(root: str, runs: pd.DataFrame) -> None:
    """The all-runs table (`side_by_side_table`) under its heading and caption."""
    table = side_by_side_table(root, runs)
    st.subheader("All runs side by side")
    st.caption("Spikes, AGOP alignment, λ_max and condensation at each run's last baseline "
               "snapshot, and the final loss (seed 001: smaller batches, more catapults, better "
               "alignment). Empty cells: the run is not analyzed yet, or the number does not apply.")
    st.dataframe(table, hide_index=True, width="stretch", key="cmp_table")


def _batch_size(path: str):
    """task.batch_size from the run's run.json, else None."""
    try:
        task = json.loads((Path(path) / "run.json").read_text(encoding="utf-8")).get("task") or {}
    except (OSError, ValueError):
        return None
    return task.get("batch_size")
