"""A two-rank DDP run (gloo, CPU) stopped at step 40 and resumed in new processes with `resume=True`:
every rank continues from rank 0's point (step, detector state, snapshot budgets, the auto probe's set),
so the ranks' capture decisions and batch gathers stay in step (before, rank 1 restarted at step 0 with
a fresh detector: its steps and decisions no longer matched rank 0's). The resumed run equals one
uninterrupted two-rank run: the same steps, losses, spike and snapshots (but the context snapshots of steps before the stop, which
lived in the stopped processes' memory)."""

from datetime import timedelta
from pathlib import Path

import pytest
from _multiprocess import example_ddp, spawn
import torch
import torch.distributed as dist
import torch.nn.functional as F

from forensics import Recorder, open_run

ROOT = Path(__file__).resolve().parents[1]
STOP, STEPS, SPIKE = 40, 80, 60


def _phase(rank, world, port, run_dir, ckpt, start, stop, options):
    """Train steps start..stop-1 on this rank's shard; resume from `ckpt` (weights, Adam state) when
    start > 0, and save it at the end on rank 0."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        ex = example_ddp()
        model = ex.make_model()
        saved = torch.load(ckpt, weights_only=False) if start else None
        if saved:
            model.load_state_dict(saved["model"])
        ddp = DDP(model)
        opt = torch.optim.Adam(ddp.parameters(), lr=1e-2)
        if saved:
            opt.load_state_dict(saved["opt"])
        with Recorder(ddp, opt, run_dir, model_factory="forensics.zoo.models:mlp",
                      model_kwargs={"sizes": ex.SIZES}, loss="mse", ring_size=4, tail=3, baseline_every=0,
                      resume=start > 0, **options) as rec:
            for t in range(start, stop):
                x, y = ex.global_batch(t, world, SPIKE)
                n = len(x) // world
                x, y = x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]
                opt.zero_grad()
                loss = F.mse_loss(ddp(x), y)
                loss.backward()
                rec.observe(loss, {"x": x, "y": y})
                opt.step()
        if rank == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, ckpt)
    finally:
        dist.destroy_process_group()


def test_a_resumed_ddp_run_equals_an_uninterrupted_one(tmp_path):
    options = {}  # the default auto probe: its set is drawn before the stop and reused after it
    spawn(_phase, str(tmp_path / "whole"), str(tmp_path / "whole.pt"), 0, STEPS, options)
    spawn(_phase, str(tmp_path / "resumed"), str(tmp_path / "resumed.pt"), 0, STOP, options)
    spawn(_phase, str(tmp_path / "resumed"), str(tmp_path / "resumed.pt"), STOP, STEPS, options)
    whole, resumed = open_run(tmp_path / "whole"), open_run(tmp_path / "resumed")
    steps = resumed.steps.column("step").to_pylist()
    assert steps == list(range(STEPS))  # each step once, numbered on from 40
    assert resumed.steps.column("loss").to_pylist() == pytest.approx(whole.steps.column("loss").to_pylist(),
                                                                     rel=1e-9)
    assert [(s.onset, s.peak, s.end) for s in resumed.spikes] == [(s.onset, s.peak, s.end) for s in whole.spikes]
    assert any(s.onset == SPIKE for s in whole.spikes)
    # the context snapshots before the stop lived in the stopped processes' memory
    assert [s.step for s in resumed.snapshots] == [s.step for s in whole.snapshots if s.step >= STOP]
    at = {s.step: s for s in whole.snapshots}
    for s in resumed.snapshots:  # the gathered global batch of every snapshot, rank by rank
        assert torch.equal(s.load().batch["x"], at[s.step].load().batch["x"]), s.step
