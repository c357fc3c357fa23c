"""The Streamlit app (`app.py`): runs, spikes and their evidence as pictures, a read-only SQL box.

`data` reads everything through the DuckDB catalog (cached on the folder's file times),
`charts` builds Altair charts as pure functions of DataFrames, `pages/` renders each page.
"""
