"""Two DDP processes, and two FSDP2 processes (gloo, CPU), record one run each: it matches a single process
trained on the same global batches (weights, gradients, moments, global loss, snapshots, verdict). The spike is planted in rank 1's shard
only, so rank 0's local loss alone would not show it."""

import sys
from datetime import timedelta
from pathlib import Path

import pytest
from _multiprocess import example_ddp, free_port, spawn
import torch
import torch.distributed as dist
import torch.nn.functional as F

from forensics import open_run
from forensics.analyzer.pipeline import Settings, analyze

ROOT = Path(__file__).resolve().parents[1]
STEPS, SPIKE = 80, 60


def _worker(rank, world, port, run_dir, fsdp2):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        example_ddp().train(rank, world, run_dir, steps=STEPS, spike_at=SPIKE, sync_every=4, fsdp2=fsdp2)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    spawn(_worker, str(d / "ddp"), False)
    spawn(_worker, str(d / "fsdp2"), True)
    one = example_ddp()
    one.train(0, 1, d / "one", steps=STEPS, spike_at=SPIKE, data_world=2)
    return open_run(d / "ddp"), open_run(d / "one"), one, open_run(d / "fsdp2")


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_two_ranks_record_the_single_process_run(runs, kind):
    """DDP (replicated state) and FSDP2 (each rank holds dim-0 shards, gathered when a snapshot is written;
    here uneven: the output layer's single row lives on rank 0, rank 1's shard is empty)."""
    ddp, one, _, fsdp = runs
    ddp = {"ddp": ddp, "fsdp2": fsdp}[kind]
    a, b = ddp.steps.column("loss").to_pylist(), one.steps.column("loss").to_pylist()
    assert len(a) == STEPS and a == pytest.approx(b, rel=1e-12)  # the global loss, not rank 0's
    assert [s.onset for s in ddp.spikes] == [s.onset for s in one.spikes] == [SPIKE]
    roles = [(s.step, s.role) for s in ddp.snapshots]
    assert roles == [(s.step, s.role) for s in one.snapshots] and (SPIKE, "onset") in roles
    for step, _ in roles:
        x, y = ddp.snapshot(step).load(), one.snapshot(step).load()
        assert x.meta["batch_shards"] == [[0, 8], [1, 8]]
        for part in ("params", "grads", "batch"):
            for name, v in getattr(y, part).items():
                torch.testing.assert_close(getattr(x, part)[name], v, rtol=1e-10, atol=1e-12)
        for kind, tensors in y.state.items():
            for name, v in tensors.items():
                torch.testing.assert_close(x.state[kind][name], v, rtol=1e-10, atol=1e-12)


def test_rank0_local_loss_alone_shows_no_spike(runs):
    """Control: the planted rows are in rank 1's shard; rank 0's own loss at the spike is ordinary."""
    ddp, _, ex, _ = runs
    x, y = ex.global_batch(SPIKE, 2, SPIKE)
    snap = ddp.snapshot(SPIKE).load()
    torch.testing.assert_close(snap.batch["y"], y)  # the global batch, both shards
    model = ex.make_model()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(snap.params[name])
        local0 = float(F.mse_loss(model(x[:8]), y[:8]))
    assert local0 < 10 * min(ddp.steps.column("loss").to_pylist()[SPIKE - 10:SPIKE])
    assert snap.meta["loss"] > 1000 * local0


def test_same_verdict(runs):
    ddp, one, ex, fsdp = runs
    s = Settings(max_snapshots=6)
    verdicts = [[x.verdict for x in analyze(r.path, model=ex.make_model(), loss_fn=F.mse_loss, write=False,
                                            settings=s).spikes] for r in (one, ddp, fsdp)]
    assert verdicts[0] and verdicts[1] == verdicts[0] and verdicts[2] == verdicts[0]


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun example on POSIX")
def test_example_runs_with_torchrun(tmp_path):
    import subprocess

    torchrun = Path(sys.executable).with_name("torchrun")
    out = subprocess.run([str(torchrun), "--nproc-per-node", "2", str(ROOT / "examples" / "ddp.py"), "--out",
                          str(tmp_path / "run"), "--steps", "70", "--spike-at", "50"],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "spikes at steps [50]" in out.stdout
    assert [s.onset for s in open_run(tmp_path / "run").spikes] == [50]


def test_other_dtensor_placements_are_refused_by_name(tmp_path):
    """Only FSDP2's Shard(0) on a 1-D mesh is recorded: a replicated DTensor (tensor-parallel style) is
    refused at construction, naming the placement, and nothing is written."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    from forensics import Recorder

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        model = torch.nn.Linear(3, 1)
        for name, p in list(model.named_parameters()):
            setattr(model, name, torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [Replicate()])))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with pytest.raises(ValueError, match=r"Replicate\(\).*only FSDP2"):
            Recorder(model, opt, tmp_path / "run")
        assert not (tmp_path / "run").exists()
    finally:
        dist.destroy_process_group()
