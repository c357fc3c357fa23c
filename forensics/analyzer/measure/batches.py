"""Engine `batches`: how many samples each recorded batch held.

Reads the `batch_rows` column of `steps/` (the first dimension of the batch's input tensor, every
recorded step; for tokens [B, T]: B sequences) over the whole run, so every short batch of the run
counts and a spike whose onset was not captured is measured too. For runs whose `steps/` have no
such column (older runs), the shape of the input tensor (`batch/<input key>` of run.json's
`batch_keys`, else the first `batch/` entry) in the header of every snapshot, nearest to the onset
first (at most `MAX_SNAPSHOTS`), without loading a tensor.
"""

from __future__ import annotations

import weakref

import numpy as np

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure import Failed, Skip
from forensics.analyzer.measure._steps import column, require_readable

WITHOUT_SNAPSHOTS = True  # steps/ batch_rows; snapshot headers only for older runs
MAX_SNAPSHOTS = 2000
_READ: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # run -> {step: rows or the error}
METRICS = {
    "batch_rows": ("samples", "rows of the step's input batch (its first dimension): at the onset and the "
                   "step before, and at every step of the run whose batch differs from the usual size "
                   "(from steps/; at every snapshot for runs without that column)"),
    "batch_rows_usual": ("samples", "at the onset: the median of batch_rows over the run's recorded steps "
                         "(or snapshots)"),
}


def _from_steps(ev: Evidence, scene) -> bool:
    """batch_rows from steps/: False when the run recorded none."""
    ctx = ev.context
    require_readable(scene.run, ctx.onset - 1, ctx.onset)  # the usual size tolerates a lost chunk
    steps, rows = column(scene.run, "batch_rows", check=False)
    ok = np.isfinite(rows) & (rows > 0)
    steps, rows = steps[ok], rows[ok]
    if not steps.size:
        return False
    usual = float(np.median(rows))
    near = (steps >= ctx.onset - 1) & (steps <= ctx.onset)
    keep = near | (rows != usual)  # one row per unusual batch, not one per step of the run
    for s, r in zip(steps[keep].tolist(), rows[keep].tolist(), strict=True):
        ev.add(s, "batches", "batch_rows", r)
    if not near.any():
        raise Skip(f"steps/ holds no batch size for the onset step {ctx.onset}")
    ev.add(ctx.onset, "batches", "batch_rows_usual", usual)
    return True


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


def _from_snapshots(ev: Evidence, scene) -> None:
    """batch_rows at every snapshot (header only) and their median, at the onset."""
    ctx = ev.context
    infos = sorted(scene.run.snapshots, key=lambda i: (abs(i.step - ctx.onset), i.step))[:MAX_SNAPSHOTS]
    if not any(i.step == ctx.onset for i in infos):
        raise Skip(f"the onset step {ctx.onset} was not captured and steps/ holds no batch sizes")
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


def measure(ev: Evidence, scene) -> None:
    """batch_rows (steps/, else snapshot headers) and the usual size at the onset; when neither
    holds the onset's batch size, the reason is the engine's skip (the rule is inconclusive)."""
    try:
        if not _from_steps(ev, scene):
            _from_snapshots(ev, scene)
    except Failed:
        raise
    except Skip as exc:  # also without snapshots (the pipeline's steps/-only path does not catch it)
        ev.skip("batches", str(exc))
