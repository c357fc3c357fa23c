"""The Lightning callback under Lightning's own DDP strategy: two CPU processes (gloo), each running
`Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(...))`, launched the way `torchrun` launches
them (environment variables set, one process per rank, `torch.multiprocessing` "spawn" so it works inside
pytest). A spike is planted in rank 1's shard only (its targets ×10 at step SPIKE); rank 0's shard is
ordinary. The truth is computed independently: each rank's own local losses (kept by the module), and a
single-process Lightning fit on the concatenated global batches."""

import os
import socket
import tempfile
import time
import warnings
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

L = pytest.importorskip("lightning.pytorch")

from forensics import open_run  # noqa: E402
from forensics.integrations.lightning import SpikeForensicsCallback  # noqa: E402
from forensics.zoo.models import mlp  # noqa: E402

SIZES = [3, 16, 1]
STEPS, SPIKE, SHARD = 70, 50, 8
FACTORY = dict(model_factory="forensics.zoo.models:mlp", model_kwargs={"sizes": SIZES}, module="net")
REC = dict(ring_size=4, tail=3, baseline_every=50, steps_chunk=32)
QUIET = ".*(num_workers|does not have many workers|LeafSpec|sync_dist|GPU available|TPU|process group).*"


class Regressor(L.LightningModule):
    """An MLP under `self.net`, Adam, mean-reduced MSE; keeps its local (per-rank) losses."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = mlp(SIZES)
        self.local_losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.local_losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def shard(step: int, rank: int, plant: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s 8 rows of global batch `step`; rank 1's targets ×10 at SPIKE when `plant`."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(SHARD, 3, generator=g)
    y = x.sum(1, keepdim=True).sin()
    return x, (y * 10.0 if plant and rank == 1 and step == SPIKE else y)


def global_batch(step: int, plant: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both shards of a step concatenated in rank order (what the snapshot must hold)."""
    a, b = shard(step, 0, plant), shard(step, 1, plant)
    return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])


class ShardedRegressor(Regressor):
    """Makes its own rank's shards (for `ddp_spawn`, where every rank gets the same Trainer arguments)."""

    def train_dataloader(self):
        shards = [shard(t, self.global_rank, True) for t in range(STEPS)]
        return torch.utils.data.DataLoader(shards, batch_size=None, shuffle=False)


def _fit(batches, run_dir, devices=1, strategy="auto", module=None):
    module = module or Regressor()
    loader = None if batches is None else torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_epochs=1,
                        callbacks=[SpikeForensicsCallback(run_dir, **FACTORY, **REC)], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False)  # each rank gets its own shard, in step order
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", QUIET)
        trainer.fit(module, loader) if loader is not None else trainer.fit(module)
    return module


def _worker(rank, world, port, out):
    from lightning.pytorch.strategies import DDPStrategy

    torch.set_num_threads(1)
    tempfile.tempdir = os.path.join(out, f"tmp{rank}")  # where rank 1 records privately (removed at close)
    os.makedirs(tempfile.tempdir)
    # What torchrun sets: Lightning then joins these processes instead of launching its own.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0", LOCAL_WORLD_SIZE=str(world))
    for name, plant in (("planted", True), ("control", False)):
        strategy = DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60))
        module = _fit([shard(t, rank, plant) for t in range(STEPS)], os.path.join(out, name), world, strategy)
        torch.save(module.local_losses, os.path.join(out, f"{name}-local{rank}.pt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("lddp")
    ctx = mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 150
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("Lightning DDP workers did not finish within 150 s")
    _fit([global_batch(t, True) for t in range(STEPS)], out / "one")  # the single-process truth
    return out


def test_one_run_directory_written_by_rank_zero(runs):
    """(a) One run directory per fit; rank 1 recorded too (it must, for the collectives) but only into a
    private temporary folder that is gone after the fit."""
    folders = sorted(p.name for p in runs.iterdir() if p.is_dir())
    assert folders == ["control", "one", "planted", "tmp0", "tmp1"]
    assert list((runs / "tmp1").iterdir()) == [] and list((runs / "tmp0").iterdir()) == []
    for name in ("planted", "control"):
        assert open_run(runs / name).steps.num_rows == STEPS


def test_global_loss_is_the_mean_over_ranks(runs):
    """(b) The recorded loss is the mean of both ranks' local losses, and the single-process loss of the
    concatenated global batch; rank 0's own loss is not it (the planted rows are on rank 1)."""
    for name in ("planted", "control"):
        local = [torch.load(runs / f"{name}-local{r}.pt") for r in (0, 1)]
        recorded = open_run(runs / name).steps.column("loss").to_pylist()
        assert len(local[0]) == len(local[1]) == STEPS
        assert recorded == pytest.approx([(a + b) / 2 for a, b in zip(*local, strict=True)], rel=1e-6)
    one = open_run(runs / "one").steps.column("loss").to_pylist()
    planted = open_run(runs / "planted").steps.column("loss").to_pylist()
    assert planted == pytest.approx(one, rel=1e-4, abs=1e-6)
    rank0 = torch.load(runs / "planted-local0.pt")
    assert planted[SPIKE] > 20 * rank0[SPIKE]


def test_snapshot_holds_the_global_batch_and_the_single_process_weights(runs):
    """(c) Both shards, in rank order, at every snapshot; the weights are the single-process run's."""
    run, one = open_run(runs / "planted"), open_run(runs / "one")
    steps = [s.step for s in run.snapshots]
    assert SPIKE in steps and steps == [s.step for s in one.snapshots]
    for step in steps:
        snap = run.snapshot(step).load()
        x, y = global_batch(step, True)
        assert snap.meta["batch_shards"] == [[0, SHARD], [1, SHARD]]
        torch.testing.assert_close(snap.batch["x"], x)
        torch.testing.assert_close(snap.batch["y"], y)
        ref = one.snapshot(step).load()
        for n, v in ref.params.items():
            torch.testing.assert_close(snap.params[n], v, rtol=1e-4, atol=1e-5)


def test_planted_spike_is_data_and_the_control_has_none(runs):
    """(d) The analyzer blames the data; the unplanted control records no spike at all."""
    from forensics.analyzer.pipeline import analyze

    run = open_run(runs / "planted")
    assert [s.onset for s in run.spikes] == [SPIKE]
    result = analyze(runs / "planted", mechanisms=["numerical", "sharpness", "data"], write=False)
    assert [s.context.onset for s in result.spikes] == [SPIKE]
    assert result.spikes[0].verdict == "data"
    control = open_run(runs / "control")
    assert control.spikes == [] and not any(e["type"] == "spike" for e in control.events)


@pytest.mark.timeout(150)
def test_ddp_spawn_records_the_same_run(runs, tmp_path):
    """`strategy="ddp_spawn"` (Lightning starts the two processes itself, from inside pytest): the same
    global loss, spike and global batch as the externally launched DDP run."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = DDPStrategy(start_method="spawn", process_group_backend="gloo", timeout=timedelta(seconds=60))
    _fit(None, tmp_path / "spawn", 2, strategy, module=ShardedRegressor())
    run, ref = open_run(tmp_path / "spawn"), open_run(runs / "planted")
    expected = ref.steps.column("loss").to_pylist()
    assert run.steps.column("loss").to_pylist() == pytest.approx(expected, rel=1e-6)
    assert [s.onset for s in run.spikes] == [SPIKE]
    snap = run.snapshot(SPIKE).load()
    assert snap.meta["batch_shards"] == [[0, SHARD], [1, SHARD]]
    torch.testing.assert_close(snap.batch["y"], global_batch(SPIKE, True)[1])
