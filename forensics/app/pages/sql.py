"""The SQL page: one read-only statement over the catalog's views; a table, and a chart when the
result has a `step` column. Writes are refused by the catalog's guard, with its message."""

from __future__ import annotations

import streamlit as st

from forensics.app import charts, data, ui
from forensics.catalog.schema import VIEWS

EXAMPLE = """SELECT run_id, spike_id, rule, status, round(score, 2) AS score, message
FROM findings
WHERE status = 'fired'
ORDER BY run_id, spike_id, score DESC"""


def render(root: str) -> None:
    st.title("SQL")
    st.caption("One read-only statement (SELECT, WITH, DESCRIBE, SUMMARIZE, EXPLAIN) over the "
               f"views of the runs under `{root}`. Writes are refused.")
    with st.expander("views and columns"):
        for view, cols in VIEWS.items():
            st.markdown(f"**{view}**: " + ", ".join(f"`{c}`" for c, _, _ in cols))
    if "sql_text" not in st.session_state:
        st.session_state["sql_text"] = st.query_params.get("sql", EXAMPLE)
    sql = st.text_area("query", key="sql_text", height=140)
    c1, c2 = st.columns([1, 4], vertical_alignment="center")
    c1.button("Run", key="sql_run", type="primary")
    log_y = c2.toggle("log-scale chart", value=False, key="sql_log")
    if not sql.strip():
        return
    try:
        result = data.run_sql(root, sql)
    except ValueError as e:
        msg = str(e)
        if "read-only" in msg.lower() or "refus" in msg.lower() or "one statement" in msg.lower():
            st.error(f"Refused: {msg}. Nothing was run; the run files are unchanged.",
                     icon=":material/block:")
        else:
            st.error(msg, icon=":material/error:")
        return
    st.caption(f"{len(result)} row(s)")
    st.dataframe(result, hide_index=True, width="stretch")
    chart = charts.sql_chart(result, log_y=log_y)
    if chart is not None:
        ui.show_chart(chart)
