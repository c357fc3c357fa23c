"""The columns of every catalog view: name, DuckDB type and meaning (docs/sql.md mirrors this).

Every view has exactly these columns first, in this order, whatever the files hold (a
column a file lacks reads as NULL); columns a newer writer added are kept after them.
"""

from __future__ import annotations

from forensics.rundir.analysis import EXTRA_TABLES
from forensics.rundir.format import ANALYSIS_TABLES

# view -> [(column, DuckDB type, meaning)]
VIEWS: dict[str, list[tuple[str, str, str]]] = {
    "runs": [
        ("run_id", "VARCHAR", "run.json run_id (unique in the catalog)"),
        ("path", "VARCHAR", "absolute path of the run directory"),
        ("format_version", "INTEGER", "run.json format_version"),
        ("created", "VARCHAR", "ISO-8601 UTC time the recorder started"),
        ("optimizer", "VARCHAR", "optimizer class path, e.g. torch.optim.adam.Adam"),
        ("optimizer_name", "VARCHAR", "last part of the class path, e.g. Adam"),
        ("lr", "DOUBLE", "lr of param group 0 at start"),
        ("momentum", "DOUBLE", "SGD momentum of group 0 (NULL when the optimizer has none)"),
        ("beta1", "DOUBLE", "Adam β₁ of group 0 (NULL when not Adam-like)"),
        ("beta2", "DOUBLE", "Adam β₂ of group 0"),
        ("eps", "DOUBLE", "eps of group 0"),
        ("weight_decay", "DOUBLE", "weight_decay of group 0"),
        ("loss", "VARCHAR", "'mse', 'cross_entropy' or an import path"),
        ("model_factory", "VARCHAR", "'package.module:callable' that rebuilds the model, or NULL"),
        ("model_kwargs", "JSON", "its keyword arguments"),
        ("num_params", "BIGINT", "number of trainable parameters (tied weights once)"),
        ("device", "VARCHAR", "training device"),
        ("torch_version", "VARCHAR", "torch version at recording time"),
        ("seed", "BIGINT", "seed, if the user gave one"),
        ("task", "JSON", "free-form task facts from run.json"),
        ("detector", "JSON", "detector settings"),
        ("num_steps", "BIGINT", "rows in steps/*.parquet"),
        ("num_spikes", "BIGINT", "rows of this run in the spikes view"),
        ("num_snapshots", "BIGINT", "rows of this run in the snapshots view"),
        ("analyzed", "BOOLEAN", "analysis/meta.json exists (the analyzer finished)"),
        ("analyzed_at", "VARCHAR", "analysis/meta.json created time, or NULL"),
        ("notes", "VARCHAR[]", "what the catalog could not find for this run"),
    ],
    "steps": [
        ("run_id", "VARCHAR", "the run"),
        ("step", "BIGINT", "0-based optimizer step"),
        ("wall_time", "DOUBLE", "seconds since the recorder started"),
        ("loss", "DOUBLE", "loss on batch t at θ_t (NaN/Inf kept)"),
        ("probe_loss", "DOUBLE", "loss of the fixed probe batch, on steps where it was evaluated"),
        ("lr", "DOUBLE", "lr of param group 0 in force for update t"),
        ("grad_norm", "DOUBLE", "‖g_t‖₂ as the optimizer sees it"),
        ("param_norm", "DOUBLE", "‖θ_t‖₂"),
        ("update_norm", "DOUBLE", "‖θ_{t+1} − θ_t‖₂ (NULL when not captured)"),
        ("optimizer_step", "BIGINT", "optimizer step count before update t"),
        ("adam_ratio_median", "DOUBLE", "median of ρ = g²/v̂_{t−1} over a fixed subsample (Adam)"),
        ("adam_ratio_frac_small", "DOUBLE", "share of that subsample with ρ < 0.1"),
        ("spike_id", "INTEGER", "spike open at this step (online detector), else NULL"),
    ],
    "spikes": ANALYSIS_TABLES["spikes"] + [
        ("recovered", "BOOLEAN", "false when the episode ended without the loss coming back (closed "
                                 "after max_len steps); NULL while it is open at the run's end"),
    ],
    "measurements": ANALYSIS_TABLES["measurements"],
    "findings": ANALYSIS_TABLES["findings"],
    "whatif": EXTRA_TABLES["whatif"],
    "snapshots": [
        ("run_id", "VARCHAR", "the run"),
        ("step", "BIGINT", "step t: state before update t"),
        ("role", "VARCHAR", "pre, onset, during, post or baseline"),
        ("spike_id", "INTEGER", "spike it belongs to (NULL for baselines)"),
        ("file", "VARCHAR", "path relative to the run directory"),
        ("path", "VARCHAR", "absolute path of the safetensors file"),
        ("bytes", "BIGINT", "file size"),
    ],
    "events": [
        ("run_id", "VARCHAR", "the run"),
        ("type", "VARCHAR", "spike_open, spike, snapshot, warning, close, …"),
        ("step", "BIGINT", "step of the event (onset for spike events)"),
        ("spike_id", "INTEGER", "spike id, when the event has one"),
        ("message", "VARCHAR", "warning text, when the event has one"),
        ("event", "JSON", "the whole event object"),
    ],
}


def empty_select(view: str) -> str:
    """A SELECT returning no rows with the documented columns and types of `view`."""
    cols = ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t, _ in VIEWS[view])
    return f"SELECT {cols} WHERE false"


def projection(view: str, present, types: dict[str, str] | None = None, *,
               skip: tuple[str, ...] = ("run_id",)) -> str:
    """Select-list of the documented columns of `view`, then the file's other columns in
    their order. A column the file lacks reads as NULL; one whose file type (`types`) is
    not the documented type is converted with TRY_CAST (a bad value reads as NULL)."""
    known = [c for c, _, _ in VIEWS[view]]
    have, types = set(present), types or {}
    parts = []
    for c, t, _ in VIEWS[view]:
        if c in skip:
            continue
        if c not in have:
            parts.append(f'CAST(NULL AS {t}) AS "{c}"')
        elif types.get(c) == t:
            parts.append(f'"{c}"')
        else:
            parts.append(f'TRY_CAST("{c}" AS {t}) AS "{c}"')
    parts += [f'"{c}"' for c in present if c not in known]
    return ", ".join(parts)
