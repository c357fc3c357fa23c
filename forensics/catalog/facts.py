"""The catalog's `runs` table: one row of facts per run, read from its run.json.

run.json is checked once, by the run-directory reader's typed `Manifest`
(forensics.rundir.manifest): a field of the wrong kind (`"optimizer": [1]`) makes the run
unreadable before it gets here, and the catalog skips it with a note.
"""

from __future__ import annotations

import json

from forensics.catalog.schema import VIEWS

STORED = [(c, t) for c, t, _ in VIEWS["runs"] if c not in ("num_spikes", "num_snapshots")]


def create_run_table(con, runs) -> None:
    """Table `_catalog_runs` (the stored columns of the runs view), one row per run."""
    con.execute("CREATE TABLE _catalog_runs (" + ", ".join(f'"{c}" {t}' for c, t in STORED) + ")")
    if runs:
        marks = ", ".join("?" for _ in STORED)
        con.executemany(f"INSERT INTO _catalog_runs VALUES ({marks})",
                        [[run_facts(r)[c] for c, _ in STORED] for r in runs])


def run_facts(r) -> dict:
    """Column -> value of the runs view for one run; TypeError / ValueError naming the field
    when run.json has it in a shape the format does not allow."""
    m = _dict(r.manifest, "run.json")
    opt = _dict(m.get("optimizer"), "optimizer")
    groups = opt.get("param_groups") or [{}]
    if not isinstance(groups, list):
        raise TypeError(f"optimizer.param_groups is {_kind(groups)}, not a list")
    group = _dict(groups[0], "optimizer.param_groups[0]")
    betas = group.get("betas") if isinstance(group.get("betas"), (list, tuple)) else None
    model = _dict(m.get("model"), "model")
    params = m.get("params") if isinstance(m.get("params"), list) else []
    cls = _text(opt.get("class"), "optimizer.class")
    return {
        "run_id": r.run_id, "path": str(r.path),
        "format_version": _int(m.get("format_version"), "format_version"),
        "created": _text(m.get("created"), "created"), "optimizer": cls,
        "optimizer_name": cls.rsplit(".", 1)[-1] if cls else None,
        "lr": _float(group.get("lr")), "momentum": _float(group.get("momentum")),
        "beta1": _float(betas[0]) if len(betas or ()) > 0 else None,
        "beta2": _float(betas[1]) if len(betas or ()) > 1 else None,
        "eps": _float(group.get("eps")), "weight_decay": _float(group.get("weight_decay")),
        "loss": _text(m.get("loss"), "loss"), "model_factory": _text(model.get("factory"), "model.factory"),
        "model_kwargs": json.dumps(model.get("kwargs") or {}),
        "num_params": sum(_int(p.get("numel"), "params[].numel") or 0
                          for p in params if isinstance(p, dict)),
        "device": _text(m.get("device"), "device"),
        "torch_version": _text(m.get("torch_version"), "torch_version"),
        "seed": m.get("seed") if isinstance(m.get("seed"), int) and not isinstance(m.get("seed"), bool)
        else None,
        "task": json.dumps(m.get("task") or {}), "detector": json.dumps(m.get("detector") or {}),
        "num_steps": r.num_steps, "analyzed": r.analyzed, "analyzed_at": r.analyzed_at,
        "notes": list(r.notes),
    }


def _kind(value) -> str:
    return f"a {type(value).__name__} ({json.dumps(value, default=str)[:40]})"


def _dict(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{what} is {_kind(value)}, not an object")
    return value


def _text(value, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):  # a number where text belongs reads as its text
        return str(value)
    raise TypeError(f"{what} is {_kind(value)}, not a string")


def _int(value, what: str) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError(f"{what} is {_kind(value)}, not an integer")


def _float(value):
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
