"""Spike forensics app: `streamlit run app.py -- RUN_DIR` (or `forensics app RUN_DIR`).

Thin page routing; the pages live in forensics/app/pages, the data access in forensics/app/data.
"""

import streamlit as st

from forensics.app import data, ui
from forensics.app.pages import compare, runs, spike, sql

st.set_page_config(page_title="spike forensics", page_icon=":material/troubleshoot:", layout="wide")

ROOT = data.root_from_argv()
RENDER = {"Runs": runs.render, "Spike": spike.render, "Compare": compare.render, "SQL": sql.render}

ui.apply_pending_navigation()
with st.sidebar:
    st.markdown("### :material/troubleshoot: spike forensics")
    page = st.radio("Page", ui.PAGES, key=ui.NAV_KEY)
    st.caption(f"runs from `{ROOT}`")
    st.button("Refresh", icon=":material/refresh:", help="re-read the folder (new steps, new analysis)")
    follow = st.toggle("follow a live run", value=False, key="follow",
                       help="re-read every 5 s while a run is being recorded")
    for note in data.notes(ROOT)[:10]:
        st.caption(f":material/info: {note}")

if st.query_params.get("page") != page.lower():
    st.query_params["page"] = page.lower()

if follow:
    st.fragment(RENDER[page], run_every=5)(ROOT)
else:
    RENDER[page](ROOT)
