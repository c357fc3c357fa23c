"""Record a DistributedDataParallel run: a plain training loop, one Recorder per rank, one run directory.

    torchrun --nproc-per-node 2 examples/ddp.py [--out runs/ddp] [--steps 120] [--spike-at 90]

Every rank trains on its shard of each global batch; a bad batch is planted in rank 1's shard at
`--spike-at`. The recorder averages the loss over ranks (asynchronously), so every rank's detector sees
the global loss and all agree on the spike; rank 0 writes the run directory, whose snapshots hold the
global batch (every rank's shard, in rank order). Runs on CPU (gloo) or one GPU per rank (nccl).
Afterwards: `forensics report runs/ddp`.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forensics import Recorder  # noqa: E402
from forensics.zoo.models import mlp  # noqa: E402

SHARD = 8  # rows per rank and step
SIZES = [3, 32, 1]


def make_model(dtype=torch.float64) -> torch.nn.Module:
    """The same initial model on every rank (and in a single-process reference)."""
    torch.manual_seed(0)
    return mlp(SIZES).to(dtype)  # Linear(3, 32), Tanh, Linear(32, 1): rebuilt by the analyzer from run.json


def global_batch(t: int, world: int, spike_at: int | None, dtype=torch.float64):
    """Step t's global batch (world * SHARD rows); the last shard's targets ×1000 at `spike_at`."""
    g = torch.Generator().manual_seed(1000 + t)
    x = torch.randn(world * SHARD, 3, generator=g, dtype=dtype)
    y = x.sum(1, keepdim=True).sin()
    if t == spike_at:
        y[-SHARD:] *= 1000.0
    return x, y


def train(rank: int, world: int, run_dir, *, steps: int, spike_at: int | None, device="cpu",
          data_world: int | None = None, fsdp2: bool = False, **options):
    """Train on this rank's share of each global batch (made for `data_world` shards, default `world`)
    with a Recorder; returns the Recorder's spikes. world=1, data_world=2: the single-process reference.
    `fsdp2`: shard the model with FSDP2's `fully_shard` instead of wrapping it in DDP."""
    model = make_model().to(device)
    ddp = DDP(model) if world > 1 and not fsdp2 else model
    if fsdp2:  # sharded instead: each rank holds a dim-0 chunk of every parameter and its moments
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        ddp = fully_shard(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-2)
    with Recorder(ddp, opt, run_dir, model_factory="forensics.zoo.models:mlp", model_kwargs={"sizes": SIZES},
                  loss="mse", ring_size=4, tail=3, baseline_every=0, probe=None, **options) as rec:
        for t in range(steps):
            x, y = global_batch(t, data_world or world, spike_at)
            n = len(x) // world
            x, y = (v[rank * n:(rank + 1) * n].to(device) for v in (x, y))
            opt.zero_grad()
            loss = F.mse_loss(ddp(x), y)  # this rank's loss; the recorder averages it over ranks
            loss.backward()  # DDP averages the gradients
            rec.observe(loss, {"x": x, "y": y})
            opt.step()
        return rec.spikes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/ddp")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--spike-at", type=int, default=90)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    try:
        spikes = train(rank, world, args.out, steps=args.steps, spike_at=args.spike_at, device=device,
                       overwrite=True)
        if rank == 0:
            print(f"{world} ranks, run in {args.out}: spikes at steps {[s.onset for s in spikes]}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
