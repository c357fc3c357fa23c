"""The spike page (`?page=spike&run=…&spike=…`): the verdict, then every finding as its picture
first (the panel its rule's spec declares, drawn by `panels`) and its numbers second."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from forensics.analyzer.mechanisms import NOT_ANALYZED, UNEXPLAINED
from forensics.app import charts, data, panels, ui, whatif_panel

STATUS_ORDER = {"fired": 0, "inconclusive": 1, "not_fired": 2}


def render(root: str) -> None:
    """Draw the Spike page: pick a run and one of its spikes (synced with the URL) and show it."""
    runs = data.runs(root)
    if not len(runs):
        st.title("Spike")
        ui.empty_folder_hint(root)
        return
    with_spikes = list(runs[runs["num_spikes"] > 0]["run_id"]) or list(runs["run_id"])
    wanted = st.query_params.get("run")
    if wanted is not None and wanted not in set(runs["run_id"]):
        st.error(f"No run `{wanted}` under `{root}`.")
    ui.init_from_param("spike_run", "run", with_spikes)
    c1 = c2 = st.sidebar
    run_id = c1.selectbox("Run", with_spikes, key="spike_run")
    spikes = data.spikes(root, run_id)
    ids = [int(s) for s in spikes["spike_id"]]
    if st.session_state.get("spike_sel") not in ids:
        st.session_state.pop("spike_sel", None)
    raw = st.query_params.get("spike")
    if raw is not None and wanted == run_id and "spike_sel" not in st.session_state:
        if not raw.lstrip("-").isdigit() or int(raw) not in ids:
            st.error(f"Run `{run_id}` has no spike `{raw}` (it has {ids or 'none'}).")
    ui.init_from_param("spike_sel", "spike", ids, convert=int)
    if not ids:
        st.title(run_id)
        st.success("This run has no spikes.", icon=":material/check_circle:")
        return
    spike_id = c2.selectbox("Spike", ids, key="spike_sel",
                            format_func=lambda s: _label(_row(spikes, s)))
    st.query_params.update({"page": "spike", "run": run_id, "spike": str(spike_id)})
    show_spike(root, runs[runs["run_id"] == run_id].iloc[0].to_dict(), _row(spikes, spike_id))


def _label(row: dict) -> str:
    return f"spike {row['spike_id']} · onset {row['onset_step']} · {row['verdict']}"


def _row(spikes: pd.DataFrame, spike_id: int) -> dict:
    return spikes[spikes["spike_id"] == spike_id].iloc[0].to_dict()


def context(root: str, run: dict, spike: dict) -> panels.SpikeFrames:
    """The frames a spike's panels need: its measurements, snapshots and the steps from three window
    widths before the loss window to one width past it."""
    lo, hi = charts.window(spike)
    lo_wide = lo - 3 * (hi - lo)
    return panels.SpikeFrames(
        root=root, run=run, spike=spike, m=data.measurements(root, run["run_id"], spike["spike_id"]),
        steps=data.steps(root, run["run_id"], lo_wide, hi + (hi - lo)),
        snaps=data.snapshots(root, run["run_id"]))


def show_spike(root: str, run: dict, spike: dict, *, compact: bool = False) -> None:
    """Header, verdict, loss window and the findings of one spike (compact: for Compare)."""
    ctx = context(root, run, spike)
    end = spike.get("end_step")
    end_txt = "still open" if end is None or pd.isna(end) else f"end {int(end)}"
    (st.subheader if compact else st.title)(f"{run['run_id']} · spike {spike['spike_id']}")
    st.caption(f"onset {spike['onset_step']} → peak {spike['peak_step']} → {end_txt} · "
               f"loss ×{spike['magnitude']:.3g} over baseline {spike['baseline_loss']:.4g} · "
               f"{run.get('optimizer_name')}, lr {run.get('lr')} · detected {spike['source']}")
    verdict = spike.get("verdict") or "not analyzed"
    st.markdown("**Verdict**")
    ui.verdict_badge(verdict, score=spike.get("verdict_score"))
    if verdict == "not analyzed":
        ui.not_analyzed_hint(run["path"])
    elif spike.get("verdict_message"):
        show = {NOT_ANALYZED: st.error, UNEXPLAINED: st.warning}.get(verdict, st.success)
        show(spike["verdict_message"])  # a failure is never shown as an answer

    snap_steps = [int(s) for s in ctx.snaps["step"]] if len(ctx.snaps) else []
    lo, hi = charts.window(spike)
    win = ctx.steps[(ctx.steps["step"] >= lo) & (ctx.steps["step"] <= hi)]
    if len(win):
        ui.show_chart(charts.loss_window(win, spike, snapshot_steps=snap_steps))
    whatif_panel.show(root, run["run_id"], spike["spike_id"], run.get("path", "RUN"))

    found = data.findings(root, run["run_id"], spike["spike_id"])
    if not len(found):
        return
    rows = zip(found["primary"], found["status"], found["score"], strict=True)
    found = found.assign(order=[(0 if p else 1, STATUS_ORDER.get(s, 3), -(sc or 0)) for p, s, sc in rows])
    found = found.sort_values("order")
    st.markdown("### Findings")
    for f in found.to_dict("records"):
        if f["primary"] or f["status"] == "fired":
            with st.container(border=True):
                _finding(ctx, f)
        else:
            label = f"{f['rule']} — {f['status'].replace('_', ' ')}"
            with st.expander(label, expanded=False):
                _finding(ctx, f)


def _finding(ctx: panels.SpikeFrames, f: dict) -> None:
    c1, c2, c3 = st.columns([3, 2, 2], vertical_alignment="center")
    c1.markdown(f"#### {f['rule']}" + ("  ·  primary verdict" if f["primary"] else ""))
    with c2:
        ui.status_badge(f["status"])
    c3.progress(float(min(max(f["score"] or 0.0, 0.0), 1.0)), text=f"score {f['score']:.2f}")
    st.markdown(f["message"])
    if not panels.draw_finding(f["rule"], ctx):
        st.caption("no measurements to draw for this rule")
    if f.get("hint"):
        st.markdown(f":material/lightbulb: **Hint:** {f['hint']}")
    if f.get("reason"):
        st.markdown(f":material/info: **Why inconclusive:** {f['reason']}")
    st.caption("numbers behind the call")
    st.json({"evidence": _loads(f["evidence"]), "thresholds": _loads(f["thresholds"])},
            expanded=False)


def _loads(text):
    try:
        return json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {"raw": text}
