"""What the recorder writes for the everyday causes (issue #16): per-step batch rows and every param
group's hyperparameters in steps/, the optimizer's own step count after its state was cleared, every
loop step under a GradScaler (skipped ones marked, with the loss scale), micro-batches of a step."""

import json
import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from forensics import Recorder
from forensics.rundir.reader import open_run
from forensics.rundir.snapshots import read_meta


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def batches(sizes, seed=1):
    g = torch.Generator().manual_seed(seed)
    for n in sizes:
        x = torch.randn(n, 4, generator=g)
        yield x, x.sum(1, keepdim=True).sin()


def steps_table(run_dir):
    return open_run(run_dir).steps.to_pylist()


def test_steps_hold_batch_rows_and_every_groups_hyperparameters(tmp_path):
    model = mlp()
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-3},
                             {"params": model[2].parameters(), "lr": 5e-4, "betas": (0.8, 0.95)}],
                            eps=1e-7, weight_decay=0.02)
    sizes = [8, 8, 8, 3, 8, 8]
    with Recorder(model, opt, tmp_path / "run", probe=None) as rec:
        for t, (x, y) in enumerate(batches(sizes)):
            if t == 4:
                opt.param_groups[1]["lr"] = 2e-2  # a jump in group 1 only
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            rec.observe(loss, {"x": x, "y": y})
            opt.step()
    rows = steps_table(tmp_path / "run")
    assert [r["batch_rows"] for r in rows] == sizes
    assert [r["micro_batches"] for r in rows] == [1] * len(sizes)
    r = rows[0]
    assert (r["beta1"], r["beta2"], r["eps"], r["weight_decay"]) == (0.9, 0.999, 1e-7, 0.02)
    assert r["momentum"] is None  # AdamW has no momentum key
    groups = [json.loads(r["param_groups"]) for r in rows]
    assert [g[1]["lr"] for g in groups] == [5e-4] * 4 + [2e-2] * 2
    assert groups[0][1]["beta1"] == 0.8 and groups[0][0]["lr"] == 1e-3
    assert {r["lr"] for r in rows} == {1e-3}


def test_sgd_momentum_column(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with Recorder(model, opt, tmp_path / "run", probe=None) as rec:
        for x, y in batches([5, 5]):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            rec.observe(loss, {"x": x, "y": y})
            opt.step()
    rows = steps_table(tmp_path / "run")
    assert [r["momentum"] for r in rows] == [0.9, 0.9]
    assert rows[0]["beta1"] is None


def test_cleared_adam_state_records_the_optimizers_own_count(tmp_path):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with Recorder(model, opt, tmp_path / "run", probe=None) as rec:
        for t, (x, y) in enumerate(batches([8] * 8)):
            if t == 5:
                opt.state.clear()
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            rec.observe(loss, {"x": x, "y": y})
            opt.step()
    assert [r["optimizer_step"] for r in steps_table(tmp_path / "run")] == [0, 1, 2, 3, 4, 0, 1, 2]


# ------------------------------------------------------------------ short batches: the default detector

STEPS_PER_EPOCH = 13  # 12 batches of 32 and one of 3


def short_batch_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32 * 12 + 3, 8, generator=g)
    y = torch.sin(x @ torch.randn(8, 1, generator=g) * 0.5)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True,
                                       drop_last=False, generator=torch.Generator().manual_seed(2))


def summed_loss(out, y):  # normalised by B twice: the 3-sample batch's loss is ×32/3 too large
    return ((out - y) ** 2).sum() / out.shape[0] ** 2 * 32


def short_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))


def check_one_short_batch_spike_per_epoch(run_dir, model, epochs):
    from forensics.analyzer import pipeline

    table = steps_table(run_dir)
    short = [r["step"] for r in table if r["batch_rows"] == 3]
    assert len(short) == epochs and all(s % STEPS_PER_EPOCH == STEPS_PER_EPOCH - 1 for s in short)
    loss = [r["loss"] for r in table]
    # a short batch is a spike when its loss is well above the full batches' of its epoch (3 samples
    # can happen to fit well: then there is nothing to find)
    spiky = [s for s in short if loss[s] > 3 * statistics.median(loss[s - STEPS_PER_EPOCH + 1:s])]
    assert len(spiky) >= epochs - 1
    result = pipeline.analyze(run_dir, model=model)
    assert [s.context.onset for s in result.spikes] == spiky
    for spike in result.spikes:
        assert spike.verdict == "short_batch", spike.verdict_message
        f = next(f for f in spike.findings if f.rule == "short_batch")
        assert (f.evidence["batch_rows"], f.evidence["usual"]) == (3, 32)


def test_every_epochs_short_batch_is_one_spike_with_the_default_detector(tmp_path):
    model, loader, epochs = short_net(), short_batch_data(), 6
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    with Recorder(model, opt, tmp_path / "run", loss=summed_loss) as rec:  # default: probe="auto"
        for _ in range(epochs):
            for xb, yb in loader:
                opt.zero_grad()
                loss = summed_loss(model(xb), yb)
                loss.backward()
                rec.observe(loss, {"x": xb, "y": yb})
                opt.step()
    check_one_short_batch_spike_per_epoch(tmp_path / "run", model, epochs)


def test_every_epochs_short_batch_through_the_lightning_callback(tmp_path):
    lightning = pytest.importorskip("lightning.pytorch")
    import warnings

    from forensics.integrations.lightning import SpikeForensicsCallback

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = short_net()

        def training_step(self, batch, i):
            return summed_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.001, momentum=0.9)

    module, epochs = Module(), 6
    callback = SpikeForensicsCallback(str(tmp_path / "run"), loss=summed_loss, module="net")
    trainer = lightning.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
                                callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, short_batch_data())
    check_one_short_batch_spike_per_epoch(tmp_path / "run", module.net, epochs)


# ------------------------------------------------------------------ float16 with a GradScaler

@pytest.mark.parametrize("observe_first, pass_scaler",
                         [(True, True), (False, True), (True, False), (False, False)])
def test_every_loop_step_is_recorded_when_the_scaler_skips(tmp_path, observe_first, pass_scaler):
    """float16 autocast on CPU; at steps 5..7 the gradients overflow (inf) so the scaler skips
    `optimizer.step()`: those loop steps are still rows, marked, with the halving loss scale;
    with `scaler=` and without it (found when `GradScaler.step` is called with the optimizer)."""
    original = torch.amp.GradScaler.step
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    overflow = {5, 6, 7}
    given = {"scaler": scaler} if pass_scaler else {}
    with Recorder(model, opt, tmp_path / "run", probe=None, **given) as rec:
        for t, (x, y) in enumerate(batches([8] * 12)):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.mse_loss(model(x).float(), y)
            scaler.scale(loss * (1e30 if t in overflow else 1.0)).backward()
            if observe_first:
                rec.observe(loss, {"x": x, "y": y})
            scaler.step(opt)
            scaler.update()
            if not observe_first:
                rec.observe(loss, {"x": x, "y": y})
        assert rec.step == 12
    assert "step" not in scaler.__dict__  # the scaler's own step is back after close
    assert torch.amp.GradScaler.step is original  # and GradScaler's
    rows = steps_table(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(12))
    assert [t for t, r in enumerate(rows) if r["amp_skipped"]] == sorted(overflow)
    assert [r["loss_scale"] for r in rows[4:9]] == [2.0**10, 2.0**10, 2.0**9, 2.0**8, 2.0**7]
    assert [r["optimizer_step"] for r in rows[3:10]] == [3, 4, 5, 5, 5, 5, 6]  # no update when skipped
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_a_scaler_of_another_optimizer_is_left_alone(tmp_path):
    """Found automatically, but only for the recorder's own optimizer: a second model's scaler
    steps (and skips) without adding rows, and two recorders each count their own steps."""
    model, other = mlp(), mlp(1)
    opt, opt2 = torch.optim.SGD(model.parameters(), lr=0.01), torch.optim.SGD(other.parameters(), lr=0.01)
    scaler, scaler2 = torch.amp.GradScaler("cpu", init_scale=4.0), torch.amp.GradScaler("cpu", init_scale=4.0)
    with Recorder(model, opt, tmp_path / "a", probe=None) as rec, \
            Recorder(other, opt2, tmp_path / "b", probe=None) as rec2:
        for t, (x, y) in enumerate(batches([4] * 6)):
            for net, o, sc, r, bad in ((model, opt, scaler, rec, t == 2),
                                       (other, opt2, scaler2, rec2, t in (1, 4))):
                o.zero_grad()
                loss = F.mse_loss(net(x), y)
                sc.scale(loss * (math.inf if bad else 1.0)).backward()
                r.observe(loss, {"x": x, "y": y})
                sc.step(o)
                sc.update()
    a, b = steps_table(tmp_path / "a"), steps_table(tmp_path / "b")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(6))
    assert [r["step"] for r in a if r["amp_skipped"]] == [2]
    assert [r["step"] for r in b if r["amp_skipped"]] == [1, 4]


def test_without_a_scaler_the_amp_columns_are_null(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Recorder(model, opt, tmp_path / "run", probe=None) as rec:
        for x, y in batches([4, 4]):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            rec.observe(loss, {"x": x, "y": y})
            opt.step()
    assert {(r["amp_skipped"], r["loss_scale"]) for r in steps_table(tmp_path / "run")} == {(None, None)}


def test_lightning_16_mixed_records_the_steps_its_scaler_skips(tmp_path):
    """Lightning's precision plugin steps through its GradScaler; the callback hands it to the Recorder.
    (On CPU Lightning makes no scaler of its own for 16-mixed: the test passes one to the plugin.)"""
    lightning = pytest.importorskip("lightning.pytorch")
    import warnings

    from lightning.pytorch.plugins.precision import MixedPrecision

    from forensics.integrations.lightning import SpikeForensicsCallback

    overflow = {4, 5}

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, i):
            loss = F.mse_loss(self.net(batch[0]).float(), batch[1])
            return loss * 1e36 if self.global_step in overflow and i in overflow else loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    x, y = next(batches([80]))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    module = Module()
    callback = SpikeForensicsCallback(str(tmp_path / "run"), module="net", probe=None)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))
    trainer = lightning.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, plugins=[plugin],
                                callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    rows = steps_table(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(10))
    assert [r["step"] for r in rows if r["amp_skipped"]] == sorted(overflow)
    assert [r["loss_scale"] for r in rows[3:7]] == [2.0**8, 2.0**8, 2.0**7, 2.0**6]


# ------------------------------------------------------------------ micro-batches

def test_every_observe_before_a_step_is_one_micro_batch(tmp_path):
    """Gradient accumulation over 3 micro-batches of 8: one row per optimizer step with the count,
    the mean loss and 24 rows; the snapshot holds the concatenated batch and each micro-batch's loss."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = list(batches([8] * 12))
    losses = []
    with Recorder(model, opt, tmp_path / "run", probe=None) as rec:
        for k in range(4):
            opt.zero_grad()
            step_losses = []
            for x, y in data[3 * k:3 * k + 3]:
                loss = F.mse_loss(model(x), y)
                (loss / 3).backward()
                rec.observe(loss, {"x": x, "y": y})
                step_losses.append(loss.item())
            losses.append(step_losses)
            opt.step()
    rows = steps_table(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert [r["micro_batches"] for r in rows] == [3] * 4
    assert [r["batch_rows"] for r in rows] == [24] * 4
    assert [r["loss"] for r in rows] == pytest.approx([sum(v) / 3 for v in losses])
    meta = read_meta(tmp_path / "run" / "snapshots" / "step-00000000.safetensors")
    assert int(meta["micro_batches"]) == 3
    assert [float(v) for v in meta["micro_batch_losses"]] == pytest.approx(losses[0])


def test_detector_short_batch_trigger_known_answer():
    """Full batches of 32 with loss 1.0/1.1 and a quiet probe; short batches of 3 at 12 (loss 1.5:
    below 2 x the window's max, no spike, and kept out of the window), 25 (2.6: a spike, though above
    2 x 1.5) and 38 (2.6 with 16 rows of 32: still short). A 2.6 on a full batch at 45 is no spike
    (the probe is quiet: the bad-batch rule needs z too)."""
    from forensics.record.detector import SpikeDetector

    det = SpikeDetector()
    special = {12: (3, 1.5), 25: (3, 2.6), 38: (16, 2.6), 45: (32, 2.6)}
    opened = []
    for t in range(50):
        rows, loss = special.get(t, (32, 1.0 + 0.1 * (t % 2)))
        opened += [(e["step"], e["rule"]) for e in det.update(t, loss, probe=0.5, rows=rows)
                   if e["type"] == "spike_open"]
    assert opened == [(25, "short"), (38, "short")]


def test_a_later_wrapper_of_gradscaler_step_keeps_working_after_close(tmp_path):
    """Another library wraps GradScaler.step while a recorder watches: after close the chain still
    reaches torch's step (no recursion), and a new recorder still finds skipped steps."""
    original = torch.amp.GradScaler.step
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    calls = []
    rec = Recorder(model, opt, tmp_path / "a", probe=None)
    inner = torch.amp.GradScaler.step

    def wrapper(self, optimizer, *a, **k):
        calls.append(1)
        return inner(self, optimizer, *a, **k)

    torch.amp.GradScaler.step = wrapper
    try:
        rec.close()
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        for run, bad_at in (("b", 1), (None, None)):
            r = Recorder(model, opt, tmp_path / run, probe=None) if run else None
            for t, (x, y) in enumerate(batches([4] * 3)):
                opt.zero_grad()
                loss = F.mse_loss(model(x), y)
                scaler.scale(loss * (math.inf if t == bad_at else 1.0)).backward()
                if r is not None:
                    r.observe(loss, {"x": x, "y": y})
                scaler.step(opt)
                scaler.update()
            if r is not None:
                r.close()
        assert len(calls) == 6
        assert [row["step"] for row in steps_table(tmp_path / "b") if row["amp_skipped"]] == [1]
    finally:
        torch.amp.GradScaler.step = original
