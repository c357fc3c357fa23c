"""Navigation and small shared widgets: query params are the app's address (`?page=spike&run=…&spike=…`).

A page change requested from inside a page (a click on a spike, an "open" button) is stored
as a pending `_goto` and applied at the top of the next run, before any widget exists, so the
widgets' session state can be set without Streamlit refusing it.
"""

from __future__ import annotations

import streamlit as st

from forensics.analyzer.mechanisms import UNEXPLAINED
from forensics.analyzer.rules import SPECS

PAGES = ("Runs", "Spike", "Compare", "SQL")
NAV_KEY = "nav"
# each mechanism's badge colour comes from its spec; the two verdicts that are not mechanisms follow
BADGE = {**{name: spec.badge for name, spec in SPECS.items()},
         UNEXPLAINED: "gray", "not analyzed": "gray"}
STATUS = {"fired": ("fired", "red", ":material/local_fire_department:"),
          "inconclusive": ("inconclusive", "orange", ":material/help:"),
          "not_fired": ("not fired", "gray", ":material/remove:")}


def page_from_params() -> str:
    """The page named by the link's `?page=` (a `spike` parameter alone means the spike page)."""
    qp = st.query_params
    slug = (qp.get("page") or ("spike" if "spike" in qp else "runs")).lower()
    return next((p for p in PAGES if p.lower() == slug), "Runs")


def apply_pending_navigation() -> None:
    """Call first in app.py: applies a pending `goto`, or sets the page from the URL once."""
    ss = st.session_state
    pending = ss.pop("_goto", None)
    if pending:
        ss[NAV_KEY] = pending["page"]
        for key in pending.get("clear", ()):
            ss.pop(key, None)
        ss.update(pending.get("state", {}))
        st.query_params.from_dict(pending["params"])
    elif NAV_KEY not in ss:
        ss[NAV_KEY] = page_from_params()


def goto(page: str, *, run: str | None = None, spike=None, state: dict | None = None,
         clear=()) -> None:
    """Switch to `page` (with run/spike in the URL) on an immediate rerun."""
    params = {"page": page.lower()}
    if run is not None:
        params["run"] = str(run)
    if spike is not None:
        params["spike"] = str(int(spike))
    st.session_state["_goto"] = {"page": page, "params": params, "state": dict(state or {}),
                                 "clear": tuple(clear)}
    st.rerun()


def spike_link(run_id: str, spike_id) -> str:
    """A relative deep link to a spike (works in a new tab too)."""
    from urllib.parse import urlencode

    return "?" + urlencode({"page": "spike", "run": run_id, "spike": int(spike_id)})


def init_from_param(key: str, param: str, options, convert=str):
    """Give widget `key` the URL's `param` as its first value when it is one of `options`."""
    if key in st.session_state and st.session_state[key] in options:
        return
    raw = st.query_params.get(param)
    try:
        value = convert(raw) if raw is not None else None
    except (TypeError, ValueError):
        value = None
    st.session_state[key] = value if value in options else (options[0] if len(options) else None)


def verdict_badge(verdict: str | None, *, score=None) -> None:
    """A badge with the spike's verdict (and score), coloured as its mechanism's spec says."""
    v = verdict or "not analyzed"
    text = v if score is None or score != score else f"{v} · score {score:.2f}"
    st.badge(text, color=BADGE.get(v, "gray"), icon=":material/gavel:")


def status_badge(status: str, container=st) -> None:
    """A badge for a finding's status: fired, not fired or inconclusive."""
    label, color, icon = STATUS.get(status, (status, "gray", None))
    container.badge(label, color=color, icon=icon)


def not_analyzed_hint(run_path: str) -> None:
    """Tell the user the run has no analysis yet and the command that makes one."""
    st.info(f"This run has not been analyzed yet: its spikes come from the recorder's online "
            f"detector and carry no verdict. Analyze it with\n\n`forensics analyze {run_path}`\n\n"
            f"then refresh this page.", icon=":material/science:")


def empty_folder_hint(root: str) -> None:
    """Tell the user the folder holds no runs and how to record the sample runs."""
    st.warning(f"No runs found under `{root}`.", icon=":material/folder_off:")
    st.markdown(
        "Record the sample runs and analyze them:\n\n"
        "```\nforensics demo            # records the sample runs into ./sample_runs\n"
        "forensics analyze sample_runs\nforensics app sample_runs\n```\n\n"
        "or record your own training with `forensics.record.recorder.Recorder` and start the app on its "
        "folder: `forensics app RUN_DIR`.")


def show_chart(chart, **kwargs):
    """st.altair_chart at the container's width and the chart's own height: Streamlit's
    "content" height squeezes a stretched single or layered chart, so the frame is given
    explicitly (plot height + room for title, axis and a bottom legend)."""
    h = getattr(chart, "height", None)
    if isinstance(h, int) and not hasattr(chart, "vconcat") and not hasattr(chart, "hconcat"):
        kwargs.setdefault("height", h + 140)
    return st.altair_chart(chart, width="stretch", **kwargs)
