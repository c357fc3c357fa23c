"""What the app shows, read only through the DuckDB catalog and cached on the folder's file times.

The cache key of every query is the folder plus a signature of the runs' files (names, sizes,
mtimes of run.json, steps chunks, events.jsonl and analysis/), so a run still being recorded or
freshly analyzed shows its new rows on the next rerun, and nothing is re-read otherwise.
The one exception to "only through the catalog" is the condensation matrix, which needs the
first-layer weights of two snapshots (`condensation_matrices`, via forensics.rundir.reader).

One catalog per folder state is shared by every session (`st.cache_resource`: it is
thread-safe, each query runs on a DuckDB cursor of its own, so a slow query in one session
never makes another wait). Every query has a time limit ($FORENSICS_SQL_TIMEOUT, default
10 s) and the SQL page's results a row limit ($FORENSICS_SQL_MAX_ROWS, default 10,000);
results are cached with `st.cache_data` (errors are never cached). One bad run never takes
the folder down: the catalog skips it with a note (`skipped`), and should opening the folder
fail all the same, each run is opened alone to find and leave out the one that fails.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from forensics.catalog import limits
from forensics.catalog.views import connect, run_query

DEFAULT_ROOT = "sample_runs"
ROOT_ENV = "FORENSICS_APP_ROOT"


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
    return open_catalog(root)


def open_catalog(root: str):
    """connect(root); if that fails as a whole (a run the catalog does not skip by itself),
    each run is opened alone and the ones that fail are left out, named in `skipped`."""
    try:
        return connect(root)
    except Exception:  # one bad run must not take the folder down
        runs = _run_dirs(Path(root))
    bad = {}
    for run in runs:
        try:
            connect(run).close()
        except Exception as e:  # named on the page; the others are still shown
            bad[str(run.resolve())] = f"skipped run {run}: {type(e).__name__}: {e}"
    cat = connect([r for r in runs if str(r.resolve()) not in bad])
    cat.skipped.update(bad)
    cat.notes[:0] = list(bad.values())
    return cat


def catalog(root: str):
    """The open catalog over `root` at its current files."""
    return _catalog(root, signature(root))


def run_sql(root: str, sql: str, params=None) -> pd.DataFrame:
    """One read-only statement through the catalog, within the time limit (ValueError for
    writes, bad SQL and a query past its limit)."""
    df, _ = _query(root, signature(root), sql, tuple(params) if params is not None else None,
                   limits.timeout_from_env(), None)
    return df


def run_user_sql(root: str, sql: str) -> tuple[pd.DataFrame, int | None]:
    """A statement typed on the SQL page: (rows, the row limit when it cut them, else None).
    At most $FORENSICS_SQL_MAX_ROWS rows (default 10,000) are fetched and cached."""
    max_rows = limits.max_rows_from_env()
    df, truncated = _query(root, signature(root), sql, None, limits.timeout_from_env(), max_rows)
    return df, (max_rows if truncated else None)


@st.cache_data(max_entries=256, show_spinner=False)
def _query(root: str, sig: tuple, sql: str, params, timeout_s, max_rows) -> tuple[pd.DataFrame, bool]:
    result = run_query(_catalog(root, sig), sql, list(params) if params is not None else None,
                       timeout_s=timeout_s, max_rows=max_rows)
    return result.table.to_pandas(), result.truncated


def notes(root: str) -> list[str]:
    """The catalog's notes on the runs under `root` (skipped runs, missing files)."""
    return list(catalog(root).notes)


def skipped(root: str) -> list[str]:
    """One sentence per run of the folder that could not be read (naming the file and why)."""
    return list(catalog(root).skipped.values())


# --- the queries the pages use ---------------------------------------------------------------

RUN_COLUMNS = ("run_id, path, optimizer_name, lr, momentum, beta1, beta2, eps, num_steps, "
               "num_spikes, num_snapshots, analyzed, analyzed_at")


def runs(root: str) -> pd.DataFrame:
    """One row per run, with its spike verdicts summarised (`verdicts`)."""
    df = run_sql(root, f"SELECT {RUN_COLUMNS} FROM runs ORDER BY run_id")
    counts = run_sql(root, "SELECT run_id, coalesce(verdict, 'not analyzed') AS verdict, "
                           "count(*) AS n FROM spikes GROUP BY ALL ORDER BY run_id, n DESC, verdict")
    summary = {rid: ", ".join(f"{v} ×{n}" for v, n in zip(g["verdict"], g["n"], strict=True))
               for rid, g in counts.groupby("run_id", sort=False)}
    df["verdicts"] = [summary.get(r, "") for r in df["run_id"]]
    return df


def run_info(root: str, run_id: str) -> dict:
    """One row of the `runs` view as a dict ({} when the run is unknown)."""
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


SPIKE_OK = "spike_id IS NOT NULL AND onset_step IS NOT NULL"


def spikes(root: str, run_id: str | None = None) -> pd.DataFrame:
    """The spikes the pages can show: those with a spike_id and an onset step (see `bad_spikes`)."""
    sql = ("SELECT run_id, spike_id, onset_step, peak_step, end_step, peak_loss, baseline_loss, "
           "magnitude, source, coalesce(verdict, 'not analyzed') AS verdict, verdict_score, "
           f"verdict_message, coalesce(sub_peaks, 1) AS sub_peaks FROM spikes WHERE {SPIKE_OK}")
    if run_id is None:
        return run_sql(root, sql + " ORDER BY run_id, onset_step")
    return run_sql(root, sql + " AND run_id = ? ORDER BY onset_step", [run_id])


def bad_spikes(root: str, run_id: str) -> int:
    """How many spike records of a run lack a usable spike_id or onset step (e.g. `"spike_id":
    "abc"` in events.jsonl): the pages leave them out and say so."""
    df = run_sql(root, f"SELECT count(*) AS n FROM spikes WHERE run_id = ? AND NOT ({SPIKE_OK})",
                 [run_id])
    return int(df["n"].iloc[0])


def spike(root: str, run_id: str, spike_id: int) -> dict:
    """One row of the `spikes` view as a dict ({} when unknown)."""
    df = spikes(root, run_id)
    df = df[df["spike_id"] == int(spike_id)]
    return df.iloc[0].to_dict() if len(df) else {}


def findings(root: str, run_id: str, spike_id: int) -> pd.DataFrame:
    """The findings of one spike, JSON columns as text."""
    return run_sql(root, 'SELECT rule, status, score, message, hint, reason, CAST(evidence AS VARCHAR) '
                         'AS evidence, CAST(thresholds AS VARCHAR) AS thresholds, "primary" '
                         "FROM findings WHERE run_id = ? AND spike_id = ?", [run_id, int(spike_id)])


def measurements(root: str, run_id: str, spike_id: int) -> pd.DataFrame:
    """Long table (step, engine, metric, value) of one spike."""
    return run_sql(root, "SELECT step, engine, metric, value FROM measurements "
                         "WHERE run_id = ? AND spike_id = ? ORDER BY step, engine, metric",
                   [run_id, int(spike_id)])


def snapshots(root: str, run_id: str) -> pd.DataFrame:
    """The snapshot files of one run: step, role, spike id, path; by step."""
    return run_sql(root, "SELECT step, role, spike_id, path FROM snapshots WHERE run_id = ? "
                         "ORDER BY step", [run_id])


def warnings(root: str, run_id: str) -> pd.DataFrame:
    """The recorder's warning events of one run, by step."""
    return run_sql(root, "SELECT step, message FROM events WHERE run_id = ? AND type = 'warning' "
                         "ORDER BY step", [run_id])


# --- the one thing the catalog cannot give: first-layer weights ------------------------------

@st.cache_data(max_entries=32, show_spinner=False)
def condensation_matrices(run_path: str, steps_: tuple[int, ...], max_neurons: int = 64):
    """{step: (m, m) cosine matrix of the first layer's neurons} for snapshot `steps_`, neurons
    ordered alike in every matrix (by the last one's leading eigenvector, so aligned groups sit
    together) and capped at `max_neurons`. None when the snapshots or the layer are missing."""
    import torch

    from forensics.analyzer.measure.condensation import first_layer
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
