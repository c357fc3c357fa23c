"""What the app shows, read only through the DuckDB catalog and cached on the folder's file times.

The cache key of every query is the folder plus a signature of the runs' files (names, sizes,
mtimes of run.json, steps chunks, events.jsonl and analysis/), so a run still being recorded or
freshly analyzed shows its new rows on the next rerun, and nothing is re-read otherwise.
The one exception to "only through the catalog" is the condensation matrix, which needs the
first-layer weights of two snapshots (`condensation_matrices`, via forensics.rundir.reader).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pandas as pd
import streamlit as st

from forensics.catalog.views import connect

DEFAULT_ROOT = "sample_runs"
ROOT_ENV = "FORENSICS_APP_ROOT"
_LOCK = threading.Lock()  # one DuckDB connection is shared by the app's script threads


def root_from_argv(argv=None) -> str:
    """The folder the app was started on: `streamlit run app.py -- RUN_DIR` (argv after the
    script), else $FORENSICS_APP_ROOT, else ./sample_runs."""
    argv = sys.argv if argv is None else argv
    if os.environ.get(ROOT_ENV):
        return os.environ[ROOT_ENV]
    if argv and Path(argv[0]).name == "app.py" and len(argv) > 1 and not argv[1].startswith("-"):
        return argv[1]
    return DEFAULT_ROOT


def _run_dirs(root: Path) -> list[Path]:
    if (root / "run.json").is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / "run.json").is_file())


def _stamp(path: Path) -> tuple:
    try:
        s = path.stat()
        return (path.name, s.st_size, s.st_mtime_ns)
    except OSError:
        return (path.name, None, None)


def signature(root: str) -> tuple:
    """(file name, size, mtime) of everything the catalog reads: changes when a run grows."""
    out = []
    for run in _run_dirs(Path(root)):
        items = [_stamp(run / "run.json"), _stamp(run / "events.jsonl")]
        for sub in ("steps", "analysis"):
            folder = run / sub
            if folder.is_dir():
                items.extend(_stamp(p) for p in sorted(folder.iterdir()) if ".tmp-" not in p.name)
        out.append((str(run), tuple(items)))
    return tuple(out)


@st.cache_resource(max_entries=4, show_spinner=False)
def _catalog(root: str, sig: tuple):
    return connect(root)


def catalog(root: str):
    """The open catalog over `root` at its current files."""
    return _catalog(root, signature(root))


def run_sql(root: str, sql: str, params=None) -> pd.DataFrame:
    """One read-only statement through the catalog (ValueError for writes and bad SQL)."""
    return _query(root, signature(root), sql, tuple(params) if params is not None else None)


@st.cache_data(max_entries=256, show_spinner=False)
def _query(root: str, sig: tuple, sql: str, params) -> pd.DataFrame:
    cat = _catalog(root, sig)
    with _LOCK:
        table = cat.sql(sql, list(params) if params is not None else None)
    return table.to_pandas()


def notes(root: str) -> list[str]:
    return list(catalog(root).notes)


# --- the queries the pages use ---------------------------------------------------------------

RUN_COLUMNS = ("run_id, path, optimizer_name, lr, momentum, beta1, beta2, eps, num_steps, "
               "num_spikes, num_snapshots, analyzed, analyzed_at")


def runs(root: str) -> pd.DataFrame:
    """One row per run, with its spike verdicts summarised (`verdicts`)."""
    df = run_sql(root, f"SELECT {RUN_COLUMNS} FROM runs ORDER BY run_id")
    counts = run_sql(root, "SELECT run_id, coalesce(verdict, 'not analyzed') AS verdict, "
                           "count(*) AS n FROM spikes GROUP BY ALL ORDER BY run_id, n DESC, verdict")
    summary = {rid: ", ".join(f"{v} ×{n}" for v, n in zip(g["verdict"], g["n"]))
               for rid, g in counts.groupby("run_id", sort=False)}
    df["verdicts"] = [summary.get(r, "") for r in df["run_id"]]
    return df


def run_info(root: str, run_id: str) -> dict:
    df = run_sql(root, f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", [run_id])
    return df.iloc[0].to_dict() if len(df) else {}


STEP_COLUMNS = ("step", "loss", "probe_loss", "lr", "grad_norm", "update_norm", "param_norm",
                "adam_ratio_median", "adam_ratio_frac_small", "spike_id")


def steps(root: str, run_id: str, lo: int | None = None, hi: int | None = None) -> pd.DataFrame:
    """Per-step scalars of a run (optionally steps lo..hi), sorted by step."""
    where, params = "run_id = ?", [run_id]
    if lo is not None:
        where, params = where + " AND step >= ?", params + [int(lo)]
    if hi is not None:
        where, params = where + " AND step <= ?", params + [int(hi)]
    return run_sql(root, f"SELECT {', '.join(STEP_COLUMNS)} FROM steps WHERE {where} ORDER BY step",
                   params)


def spikes(root: str, run_id: str | None = None) -> pd.DataFrame:
    sql = ("SELECT run_id, spike_id, onset_step, peak_step, end_step, peak_loss, baseline_loss, "
           "magnitude, source, coalesce(verdict, 'not analyzed') AS verdict, verdict_score, "
           "verdict_message FROM spikes")
    if run_id is None:
        return run_sql(root, sql + " ORDER BY run_id, onset_step")
    return run_sql(root, sql + " WHERE run_id = ? ORDER BY onset_step", [run_id])


def spike(root: str, run_id: str, spike_id: int) -> dict:
    df = spikes(root, run_id)
    df = df[df["spike_id"] == int(spike_id)]
    return df.iloc[0].to_dict() if len(df) else {}


def findings(root: str, run_id: str, spike_id: int) -> pd.DataFrame:
    return run_sql(root, 'SELECT rule, status, score, message, hint, reason, CAST(evidence AS VARCHAR) '
                         'AS evidence, CAST(thresholds AS VARCHAR) AS thresholds, "primary" '
                         "FROM findings WHERE run_id = ? AND spike_id = ?", [run_id, int(spike_id)])


def measurements(root: str, run_id: str, spike_id: int) -> pd.DataFrame:
    """Long table (step, engine, metric, value) of one spike."""
    return run_sql(root, "SELECT step, engine, metric, value FROM measurements "
                         "WHERE run_id = ? AND spike_id = ? ORDER BY step, engine, metric",
                   [run_id, int(spike_id)])


def snapshots(root: str, run_id: str) -> pd.DataFrame:
    return run_sql(root, "SELECT step, role, spike_id, path FROM snapshots WHERE run_id = ? "
                         "ORDER BY step", [run_id])


def warnings(root: str, run_id: str) -> pd.DataFrame:
    return run_sql(root, "SELECT step, message FROM events WHERE run_id = ? AND type = 'warning' "
                         "ORDER BY step", [run_id])


# --- the one thing the catalog cannot give: first-layer weights ------------------------------

@st.cache_data(max_entries=32, show_spinner=False)
def condensation_matrices(run_path: str, steps_: tuple[int, ...], max_neurons: int = 64):
    """{step: (m, m) cosine matrix of the first layer's neurons} for snapshot `steps_`, neurons
    ordered alike in every matrix (by the last one's leading eigenvector, so aligned groups sit
    together) and capped at `max_neurons`. None when the snapshots or the layer are missing."""
    import torch

    from forensics.analyze.measure.condensation import first_layer
    from forensics.math.condensation import cosine_matrix
    from forensics.rundir.reader import open_run

    try:
        run = open_run(run_path)
        layers = {s: first_layer(run.snapshot(s).load(include=("param",)).params) for s in steps_}
    except (KeyError, OSError, ValueError):
        return None
    if any(layer is None for layer in layers.values()):
        return None
    mats = {s: cosine_matrix(*layer) for s, layer in layers.items()}
    last = mats[steps_[-1]]
    m = last.shape[0]
    keep = torch.arange(m)[:max_neurons]
    _, vecs = torch.linalg.eigh(last[keep][:, keep])
    lead = vecs[:, -1]
    order = keep[torch.argsort(lead)]
    return {s: c[order][:, order].numpy() for s, c in mats.items()}
