"""The SQL page: one read-only statement over the catalog's views; a table, and a chart when the
result has a `step` column. Writes are refused by the catalog's guard, with its message.

Nothing runs until the Run button is pressed: a link `?page=sql&sql=…` only fills the box.
The last statement run stays shown (its result is cached) until another is run; a query past
the time limit is stopped with a message, and a result longer than the row limit is cut,
saying so.
"""

from __future__ import annotations

import streamlit as st

from forensics.app import charts, data, ui
from forensics.catalog.schema import VIEWS

EXAMPLE = """SELECT run_id, spike_id, rule, status, round(score, 2) AS score, message
FROM findings
WHERE status = 'fired'
ORDER BY run_id, spike_id, score DESC"""
RAN = "sql_ran"  # session key: the statement the Run button last ran


def render(root: str) -> None:
    """The SQL page: a box prefilled from the link, run on a click, within the limits."""
    st.title("SQL")
    st.caption("One read-only statement (SELECT, WITH, DESCRIBE, SUMMARIZE, EXPLAIN) over the "
               f"views of the runs under `{root}`. Writes are refused.")
    with st.expander("views and columns"):
        for view, cols in VIEWS.items():
            st.markdown(f"**{view}**: " + ", ".join(f"`{c}`" for c, _, _ in cols))
    if "sql_text" not in st.session_state:  # a link prefills the box; it never runs by itself
        st.session_state["sql_text"] = st.query_params.get("sql", EXAMPLE)
    sql = st.text_area("query", key="sql_text", height=140)
    c1, c2 = st.columns([1, 4], vertical_alignment="center")
    if c1.button("Run", key="sql_run", type="primary"):
        st.session_state[RAN] = sql
    log_y = c2.toggle("log-scale chart", value=False, key="sql_log")
    ran = st.session_state.get(RAN)
    if ran is None:
        st.info("Press **Run** to run the query.", icon=":material/play_arrow:")
        return
    if ran != sql:
        st.caption("Showing the result of the query last run; press **Run** for the one above.")
    if not ran.strip():
        return
    try:
        result, cut_at = data.run_user_sql(root, ran)
    except ValueError as e:
        _error(str(e))
        return
    if cut_at is not None:
        st.warning(f"Only the first {cut_at:,} rows are shown: the result has more (the app's "
                   "row limit). Aggregate or add a LIMIT / WHERE to see the rest.",
                   icon=":material/content_cut:")
    st.caption(f"{len(result)} row(s)")
    st.dataframe(result, hide_index=True, width="stretch")
    chart = charts.sql_chart(result, log_y=log_y)
    if chart is not None:
        ui.show_chart(chart)


def _error(msg: str) -> None:
    low = msg.lower()
    if "read-only" in low or "refus" in low or "one statement" in low:
        st.error(f"Refused: {msg}. Nothing was run; the run files are unchanged.",
                 icon=":material/block:")
    elif "time limit" in low:
        st.error(msg, icon=":material/timer_off:")
    else:
        st.error(msg, icon=":material/error:")
