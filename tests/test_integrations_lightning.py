"""The Lightning callback records a real Trainer run like a plain loop: planted spike, exact grads, resume."""

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

L = pytest.importorskip("lightning.pytorch")

from forensics import Recorder, open_run  # noqa: E402
from forensics.integrations.lightning import SpikeForensicsCallback  # noqa: E402
from forensics.zoo.models import mlp  # noqa: E402

SIZES = [3, 16, 1]
FACTORY = dict(model_factory="forensics.zoo.models:mlp", model_kwargs={"sizes": SIZES}, module="net")
REC = dict(ring_size=4, tail=3, baseline_every=50, steps_chunk=32)


class Regressor(L.LightningModule):
    """BoringModel-style: an MLP under `self.net`, Adam, mean-reduced MSE."""

    def __init__(self, lr=1e-2, seed=0, poison_steps=()):
        super().__init__()
        self.poison_steps = set(poison_steps)
        torch.manual_seed(seed)
        self.net = mlp(SIZES)
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.trainer.global_step in self.poison_steps:
            y = y * 100.0
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def _batches(n, poison=(), seed=1, bs=8):
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(n):
        x = torch.randn(bs, 3, generator=g)
        y = x.sum(1, keepdim=True).sin()
        out.append((x, y * 100.0 if t in poison else y))
    return out


def _fit(module, batches, cb, ckpt_path=None, max_epochs=1, **trainer_kw):
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=[cb], enable_checkpointing=False,
                        logger=False, enable_progress_bar=False, enable_model_summary=False, **trainer_kw)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(num_workers|does not have many workers|LeafSpec).*")
        trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer


def _mse_grad(params, x, y):
    model = mlp(SIZES)
    with torch.no_grad():
        for p, v in zip(model.parameters(), params):
            p.copy_(v)
    loss = F.mse_loss(model(x), y)
    return loss.item(), [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def _adam_step(snap, names):
    """θ_{t+1} from snapshot t by hand (torch.optim.Adam, no weight decay): the update the optimizer made."""
    lr, (b1, b2), eps = float(snap.meta["lr"]), snap.meta["betas"], float(snap.meta["eps"])
    k = int(snap.meta["optimizer_step"]) + 1
    out = []
    for n in names:
        g, m, v = snap.grads[n], snap.exp_avg[n], snap.exp_avg_sq[n]
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        out.append(snap.params[n] - lr * (m / (1 - b1 ** k)) / ((v / (1 - b2 ** k)).sqrt() + eps))
    return out


def _names(run):
    return [p["name"] for p in run.manifest["params"]]


def _check_onset_grad_is_the_update(run, onset):
    names = _names(run)
    snap, nxt = run.snapshot(onset).load(), run.snapshot(onset + 1).load()
    loss, g = _mse_grad([snap.params[n] for n in names], snap.batch["x"], snap.batch["y"])
    return snap, nxt, names, loss, g


def test_lightning_run_has_the_plain_loop_shape_and_finds_the_spike(tmp_path):
    onset = 70
    cb = SpikeForensicsCallback(tmp_path / "pl", **FACTORY, **REC)
    trainer = _fit(Regressor(), _batches(100, poison={onset}), cb)
    assert trainer.global_step == 100

    # a plain-loop recording of the same model, for the shape of the run directory
    model = mlp(SIZES)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with Recorder(model, opt, tmp_path / "plain", model_factory="forensics.zoo.models:mlp",
                  model_kwargs={"sizes": SIZES}, **REC) as rec:
        for x, y in _batches(3):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            rec.observe(loss, {"x": x, "y": y})
            opt.step()
    run, plain = open_run(tmp_path / "pl"), open_run(tmp_path / "plain")
    assert set(run.manifest) == set(plain.manifest)
    assert run.manifest["model"] == plain.manifest["model"] and _names(run) == _names(plain)
    assert run.steps.column_names == plain.steps.column_names
    assert run.steps.column("step").to_pylist() == list(range(100))

    assert [s.onset for s in run.spikes] == [onset]
    snap, nxt, names, loss, g = _check_onset_grad_is_the_update(run, onset)
    assert snap.meta["role"] == "onset" and snap.meta["grad_clipped"] in ("false", False)
    assert set(snap.params) == set(snap.grads) == set(snap.exp_avg) == set(snap.exp_avg_sq) == set(names)
    assert set(snap.batch) == {"x", "y"}
    assert float(snap.meta["loss"]) == pytest.approx(loss, rel=1e-5)
    for n, gi in zip(names, g):  # the gradient of the recorded batch at the recorded weights ...
        torch.testing.assert_close(snap.grads[n], gi, rtol=1e-4, atol=1e-6)
    for n, th in zip(names, _adam_step(snap, names)):  # ... is the one the update used
        torch.testing.assert_close(nxt.params[n], th, rtol=1e-4, atol=1e-6)
    assert sum(1 for e in run.events if e["type"] == "spike") == 1

    from forensics.analyzer.pipeline import analyze

    result = analyze(tmp_path / "pl", mechanisms=["numerical", "sharpness", "data"])
    assert [s.context.onset for s in result.spikes] == [onset]
    assert {f.rule for f in result.spikes[0].findings} == {"numerical", "sharpness", "data"}
    assert "curvature" not in result.spikes[0].evidence.skipped
    assert result.spikes[0].verdict == "data"  # the poisoned batch


def test_clipping_and_accumulation_record_the_grad_the_optimizer_used(tmp_path):
    onset = 40  # optimizer step; micro-batches 80 and 81 make it up
    cb = SpikeForensicsCallback(tmp_path / "acc", **FACTORY, **REC)
    _fit(Regressor(), _batches(120, poison={2 * onset}), cb, accumulate_grad_batches=2, gradient_clip_val=0.5)
    run = open_run(tmp_path / "acc")
    assert run.steps.num_rows == 60
    assert [s.onset for s in run.spikes] == [onset]
    snap, nxt, names, loss, g = _check_onset_grad_is_the_update(run, onset)
    assert snap.batch["x"].shape[0] == 16  # both micro-batches
    assert int(snap.meta["micro_batches"]) == 2 and len(snap.meta["micro_batch_losses"]) == 2
    assert run.steps.column("micro_batches")[onset].as_py() == 2
    assert run.steps.column("batch_rows")[onset].as_py() == 16
    assert float(snap.meta["loss"]) == pytest.approx(loss, rel=1e-5)  # mean of the two micro-batch means
    assert snap.meta["grad_clipped"] in ("true", True)
    norm = math.sqrt(sum(float(gi.square().sum()) for gi in g))
    scale = 0.5 / (norm + 1e-6)
    assert scale < 1
    for n, gi in zip(names, g):  # the accumulated gradient, after Lightning's clipping
        torch.testing.assert_close(snap.grads[n], gi * scale, rtol=1e-4, atol=1e-6)
    for n, th in zip(names, _adam_step(snap, names)):
        torch.testing.assert_close(nxt.params[n], th, rtol=1e-4, atol=1e-6)
    assert float(run.steps.column("grad_norm")[onset].as_py()) == pytest.approx(0.5, rel=1e-4)


def test_resume_from_a_checkpoint_keeps_the_detector_statistics(tmp_path):
    cb = SpikeForensicsCallback(tmp_path / "first", **FACTORY, **REC)
    trainer = _fit(Regressor(), _batches(40), cb)
    trainer.save_checkpoint(tmp_path / "ckpt.ckpt")
    saved = cb.state_dict()
    assert len(saved["detector"]["channels"]["loss"]["values"]) == 40 and saved["step"] == 40

    # the state round-trips through the callback API ...
    other = SpikeForensicsCallback(tmp_path / "unused", **FACTORY)
    other.load_state_dict(json.loads(json.dumps(saved)))
    assert other.state_dict() == saved

    # ... and through a real Lightning checkpoint: a spike three steps after resuming (global step
    # 43) is caught, which a fresh detector (min_history=16) could not do
    resumed = SpikeForensicsCallback(tmp_path / "second", **FACTORY, **REC)
    _fit(Regressor(poison_steps={43}), _batches(24, seed=7), resumed, ckpt_path=tmp_path / "ckpt.ckpt",
         max_epochs=3, max_steps=50)
    run = open_run(tmp_path / "second")
    assert run.steps.num_rows == 10
    assert [s.onset for s in run.spikes] == [3]
    assert run.snapshot(3).load().meta["role"] == "onset"
    fresh = SpikeForensicsCallback(tmp_path / "fresh", **FACTORY, **REC)
    _fit(Regressor(poison_steps={3}), _batches(24, seed=7), fresh, max_steps=10)
    assert open_run(tmp_path / "fresh").spikes == []


def test_only_global_rank_zero_records(tmp_path):
    class Rank1:
        is_global_zero = False
        optimizers = [torch.optim.Adam(mlp(SIZES).parameters())]

    cb = SpikeForensicsCallback(tmp_path / "rank1", **FACTORY)
    cb.on_fit_start(Rank1(), Regressor())
    assert cb.recorder is None and not (tmp_path / "rank1").exists()
    cb.on_before_backward(Rank1(), None, torch.tensor(1.0))  # other hooks do nothing either
    assert cb.state_dict() == {}


def test_several_processes_without_a_process_group_record_rank_zero_and_say_so(tmp_path):
    """A multi-process strategy whose ranks share no torch.distributed group (so no all-reduce is
    possible): rank 0 records its local view with a warning, other ranks nothing. Under DDP every rank
    records (tests/test_lightning_ddp.py)."""
    class Rank:  # a stand-in trainer: only the attributes the callback reads
        world_size = 2
        optimizers = [torch.optim.Adam(mlp(SIZES).parameters())]
        precision_plugin = None

        def __init__(self, zero):
            self.is_global_zero = zero

    one = SpikeForensicsCallback(tmp_path / "r1", **FACTORY)
    one.on_fit_start(Rank(False), Regressor())
    assert one.recorder is None and not (tmp_path / "r1").exists()
    zero = SpikeForensicsCallback(tmp_path / "r0", **FACTORY)
    with pytest.warns(UserWarning, match="2 processes train but they share no torch.distributed"):
        zero.on_fit_start(Rank(True), Regressor())
    assert zero.recorder is not None
    zero._close()
