"""The runs page: every run under the folder with its spikes and verdicts, the zoomable loss curve
and per-step scalars of the chosen run; a click on a spike opens the spike page."""

from __future__ import annotations

import streamlit as st

from forensics.app import charts, data, ui

CHART_WIDTH = 760  # px of each panel's plot area; + ≈ 80 px of axes < the ≈ 940 px column at 1400 px
SCALARS = ("lr", "grad_norm", "update_norm", "param_norm", "adam_ratio_median",
           "adam_ratio_frac_small", "probe_loss")


def render(root: str) -> None:
    """The runs page: every run with its verdicts, then the chosen run's loss curve and scalars."""
    st.title("Runs")
    for problem in data.skipped(root):  # a bad run is named, the others are still shown
        st.warning(f"{problem} — this run is left out; the others are shown.",
                   icon=":material/report:")
    runs = data.runs(root)
    if not len(runs):
        ui.empty_folder_hint(root)
        return
    st.caption(f"{len(runs)} run(s) under `{root}`")
    table = runs[["run_id", "optimizer_name", "lr", "num_steps", "num_spikes", "verdicts", "analyzed"]]
    st.dataframe(table.rename(columns={"optimizer_name": "optimizer", "num_steps": "steps",
                                       "num_spikes": "spikes"}),
                 hide_index=True, width="stretch")

    ids = list(runs["run_id"])
    ui.init_from_param("runs_run", "run", ids)
    run_id = st.selectbox("Run", ids, key="runs_run")
    st.query_params["run"] = run_id
    info = runs[runs["run_id"] == run_id].iloc[0].to_dict()
    try:
        _render_run(root, info)
    except ValueError as e:  # e.g. a query past the time limit: name the run, keep the page
        st.error(f"Run `{run_id}` could not be shown: {e}", icon=":material/error:")


def _render_run(root: str, info: dict) -> None:
    run_id = info["run_id"]
    steps = data.steps(root, run_id)
    spikes = data.spikes(root, run_id)
    bad = data.bad_spikes(root, run_id)
    if bad:
        st.warning(f"Run `{run_id}`: {bad} spike record(s) in events.jsonl have no valid spike_id "
                   "or onset step and are left out.", icon=":material/report:")
    opt = info.get("optimizer_name") or "?"
    st.subheader(run_id)
    st.caption(f"{opt}, lr {info.get('lr')}, {len(steps)} steps, {len(spikes)} spike(s)"
               + ("" if info.get("analyzed") else " — not analyzed"))
    if not info.get("analyzed"):
        ui.not_analyzed_hint(info["path"])
    if not len(steps):
        st.info("No steps recorded yet: the first chunk appears after `steps_chunk` steps "
                "(or at `close()`). Refresh to see new steps.")
        return

    c1, c2 = st.columns([1, 3])
    log_scale = c1.toggle("log scale", value=True, key="runs_log")
    present = [s for s in SCALARS if s in steps and steps[s].notna().any()]
    default = [s for s in ("lr", "grad_norm", "update_norm", "adam_ratio_median") if s in present]
    scalars = c2.multiselect("per-step scalars", present, default=default, key="runs_scalars",
                             format_func=lambda s: charts.SCALAR_LABELS.get(s, s))
    # Vega-Lite cannot fit a concatenated chart to its container ("container" widths overflow
    # by the axes), so the width is fixed to fit the main column at 1400 px (≈ 940 px there) with
    # the axes, and the verdict legend goes below in rows (on the right it pushed the last
    # steps off-screen); checked in tests/test_app_browser.py
    chart = charts.run_overview(steps, spikes, log_scale=log_scale, scalars=scalars,
                                width=CHART_WIDTH).configure_legend(orient="bottom", columns=5)
    event = st.altair_chart(chart, width="content", on_select="rerun",
                            selection_mode=["spike_pick"], key="runs_chart")
    picked = (event or {}).get("selection", {}).get("spike_pick") if event else None
    if picked:
        hit = picked[0]
        ui.goto("Spike", run=hit.get("run_id", run_id), spike=hit["spike_id"],
                state={"spike_run": hit.get("run_id", run_id), "spike_sel": int(hit["spike_id"])},
                clear=("runs_chart",))

    if not len(spikes):
        st.success("No spikes in this run.", icon=":material/check_circle:")
        return
    st.markdown("**Spikes**")
    rows = spikes.assign(open=[ui.spike_link(run_id, s) for s in spikes["spike_id"]])
    st.dataframe(rows[["spike_id", "onset_step", "peak_step", "end_step", "magnitude", "verdict",
                       "verdict_score", "verdict_message", "open"]],
                 hide_index=True, width="stretch",
                 column_config={"open": st.column_config.LinkColumn("open", display_text="open ↗"),
                                "magnitude": st.column_config.NumberColumn(format="×%.2f"),
                                "verdict_score": st.column_config.NumberColumn("score", format="%.2f")})
    ids = [int(s) for s in spikes["spike_id"]]
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    chosen = c1.selectbox("Spike", ids, key="runs_spike", format_func=lambda s: _label(spikes, s))
    if c2.button("Open spike", key="runs_open", type="primary"):
        ui.goto("Spike", run=run_id, spike=chosen, state={"spike_run": run_id, "spike_sel": chosen})


def _label(spikes, spike_id: int) -> str:
    row = spikes[spikes["spike_id"] == spike_id].iloc[0]
    return f"spike {spike_id} · steps {row['onset_step']}→{row['peak_step']} · {row['verdict']}"
