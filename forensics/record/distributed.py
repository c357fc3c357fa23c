"""Recording under `torch.distributed` data parallelism (DDP): one run directory for all ranks.

- The loss (and the probe loss) of every step is averaged over the ranks with an asynchronous
  `all_reduce`, waited for only when the recorder fetches its scalars (`Deferred`), so every rank feeds
  the same global value to the same detector and all ranks agree when to capture without further
  communication.
- Weights, gradients and optimizer state are the same on every rank under DDP; the batch is not. When a
  snapshot is written, every rank's shard of that step's batch is gathered (`all_gather_object`, only
  then: no per-step batch traffic) and concatenated in rank order; the snapshot's `batch_shards`
  metadata lists `[rank, rows]`.
- Only rank 0 writes the run directory; the other ranks record into a private temporary folder that
  is removed at close (docs/format.md, "Several processes").
- A resumed run (`resume=True`): rank 0 reads where the run stopped (step, detector state, snapshot
  budgets, the auto probe's set) and broadcasts it (`share_resume`), so every rank continues from the
  same step with the same detector and budgets: their capture decisions, and so the batch gathers,
  stay in step.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when torch.distributed is not in use."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RankSetup:
    """Where this rank records: the run directory (rank 0, or a single process) or a private temporary
    folder (other ranks: same bookkeeping, nothing shared written)."""

    def __init__(self, run_dir):
        self.rank, self.world = rank_and_world()
        self.writer = self.rank == 0
        self._tmp = None if self.writer else tempfile.mkdtemp(prefix=f"forensics-rank{self.rank}-")
        self.run_dir = Path(run_dir) if self.writer else Path(self._tmp) / "run"

    @property
    def distributed(self) -> bool:
        """Whether more than one process trains."""
        return self.world > 1

    def cleanup(self) -> None:
        """Remove a non-writing rank's temporary folder."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def share_resume(point, run_dir: Path, writer: bool):
    """Rank 0's `ResumePoint` (None: nothing to resume) on every rank, with its auto-probe file
    (`probe.safetensors`) copied into a non-writing rank's `run_dir`, via `broadcast_object_list`.
    Every rank must call it (a collective). Returns the point."""
    import torch.distributed as dist

    from forensics.record.probe import PROBE_FILE

    probe = Path(run_dir) / PROBE_FILE
    payload = [(point, probe.read_bytes() if writer and probe.is_file() else None)]
    dist.broadcast_object_list(payload, src=0)
    point, probe_bytes = payload[0]
    if not writer and point is not None and probe_bytes is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(probe_bytes)
    return point


class GlobalMean:
    """Means (or, `mean=False`, sums) over ranks of per-step scalars, reduced asynchronously; the result
    lands in a `Deferred`."""

    def __init__(self, deferred, world: int, mean: bool = True):
        self.deferred, self.world, self.mean = deferred, world, mean

    def put(self, target, key, value, fn=float) -> None:
        """`target[key] = fn(mean over ranks of value)` at the next fetch. Every rank must call this in the
        same order; `value` None or a number on some rank and not others is sent as NaN (no hang)."""
        import torch.distributed as dist

        if self.world == 1:
            self.deferred.put(target, key, value, fn)
            return
        if isinstance(value, torch.Tensor):
            buf = value.detach().reshape(1).to(torch.float64, copy=True)
        else:
            buf = torch.tensor([float("nan") if value is None else float(value)], dtype=torch.float64)
        if dist.get_backend() == "nccl" and buf.device.type != "cuda":
            buf = buf.to(torch.device("cuda", torch.cuda.current_device()))
        work = dist.all_reduce(buf, op=dist.ReduceOp.SUM, async_op=True)
        self.deferred.put_reduced(target, key, buf, work, 1.0 / self.world if self.mean else 1.0, fn)


def unwrap_ddp(model):
    """The module inside a `DistributedDataParallel` wrapper (its names are the model's own)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def sharded(params: list) -> bool:
    """Whether the parameters are FSDP2 shards (DTensors sharded along dim 0). ValueError for any other
    DTensor placement (tensor parallel), which is not recorded."""
    try:
        from torch.distributed.tensor import DTensor, Shard
    except ImportError:  # torch without distributed tensors
        return False
    dt = [p for p in params if isinstance(p, DTensor)]
    bad = [p for p in dt if p.device_mesh.ndim != 1 or p.placements != (Shard(0),)]
    if bad:
        raise ValueError(f"{len(bad)} parameters are DTensors with placements {bad[0].placements} on a "
                         f"{bad[0].device_mesh.ndim}-D mesh: only FSDP2 (fully_shard, Shard(0) on a 1-D "
                         "mesh) and DDP are recorded (docs/format.md, 'Several processes')")
    return bool(dt)


def gather_full(export: dict) -> dict:
    """An export of this rank's shards (`Ring.export`) -> the full tensors (FSDP2 shards are dim-0 chunks in
    rank order), as an export with full-shape layouts. A collective: every rank calls it per snapshot."""
    import torch.distributed as dist

    from forensics.record.ring import Layout

    out = {}
    for kind, (layout, flats) in export["banks"].items():
        mine = {n: v.contiguous() for n, v in layout.views(flats).items()}
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, mine)
        full = [torch.cat([p[n] for p in parts]) for n in layout.names]
        lay = Layout.of(layout.names, full)
        flat = {dt: torch.empty(n, dtype=dt) for dt, n in lay.totals.items()}
        for view, t in zip(lay.views(flat).values(), full, strict=True):
            view.copy_(t)
        out[kind] = (lay, flat)
    return {**export, "banks": out}


def gather_batch(batch: dict) -> tuple[dict, list]:
    """Every rank's shard of a step's batch (CPU tensors), concatenated along dim 0 in rank order, and
    `[[rank, rows], ...]`. A collective: every rank calls it for the same snapshot, in the same order."""
    import torch.distributed as dist

    world = dist.get_world_size()
    shards: list = [None] * world
    dist.all_gather_object(shards, {k: v.cpu() for k, v in batch.items()})
    keys = [k for k in shards[0] if all(k in s for s in shards)]
    out = {}
    for k in keys:
        parts = [s[k] for s in shards]
        out[k] = torch.cat(parts) if all(p.dim() for p in parts) else parts[0]
    rows = [[r, int(s[keys[0]].shape[0]) if keys and s[keys[0]].dim() else 0] for r, s in enumerate(shards)]
    return out, rows


__all__ = ["GlobalMean", "RankSetup", "gather_batch", "rank_and_world", "gather_full", "sharded",
           "unwrap_ddp"]
