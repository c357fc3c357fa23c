"""Engine `batches`: how many samples each recorded batch held.

Reads the shape of the batch's input tensor (`batch/<input key>` of run.json's `batch_keys`, else
the first `batch/` entry) from the header of every snapshot of the run, nearest to the onset
first (at most `MAX_SNAPSHOTS`), without loading a tensor. Rows = the tensor's first dimension
(for tokens [B, T]: B sequences).
"""

from __future__ import annotations

import weakref

import numpy as np

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure import Skip

MAX_SNAPSHOTS = 2000
_READ: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # run -> {step: rows or the error}
METRICS = {
    "batch_rows": ("samples", "rows of the snapshot's input batch (its first dimension)"),
    "batch_rows_usual": ("samples", "at the onset: the median of batch_rows over the run's snapshots"),
}


def _rows(path, keys: dict) -> int | None:
    """The first dimension of the input batch tensor in a snapshot file's header, or None."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        names = [n for n in f.keys() if n.startswith("batch/")]
        wanted = f"batch/{keys.get('input', 'x')}"
        name = wanted if wanted in names else (sorted(names)[0] if names else None)
        if name is None:
            return None
        shape = f.get_slice(name).get_shape()
    return int(shape[0]) if shape else None


def measure(ev: Evidence, scene) -> None:
    """batch_rows at every snapshot (header only) and their median, at the onset."""
    ctx = ev.context
    infos = sorted(scene.run.snapshots, key=lambda i: (abs(i.step - ctx.onset), i.step))[:MAX_SNAPSHOTS]
    if not any(i.step == ctx.onset for i in infos):
        raise Skip(f"the onset step {ctx.onset} was not captured")
    keys = scene.run.manifest.get("batch_keys") or {}
    read = _READ.setdefault(scene.run, {})  # each header once per run, whatever the spikes
    sizes, failed = {}, []
    for info in infos:
        if info.step not in read:
            try:
                read[info.step] = _rows(info.path, keys)
            except Exception as exc:  # a broken header loses only its own step
                read[info.step] = f"step {info.step}: {type(exc).__name__}: {exc}"
        rows = read[info.step]
        if isinstance(rows, str):
            failed.append(rows)
            continue
        if rows is not None:
            sizes[info.step] = rows
            ev.add(info.step, "batches", "batch_rows", rows)
    if failed:
        ev.skip("batches", f"{len(failed)} snapshot header(s) unreadable; " + "; ".join(failed[:3]))
    if ctx.onset not in sizes:
        raise Skip(f"the snapshot of step {ctx.onset} holds no batch")
    ev.add(ctx.onset, "batches", "batch_rows_usual", float(np.median(list(sizes.values()))))
