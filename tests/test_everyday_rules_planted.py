"""The everyday mechanisms (issue #16) on planted cases recorded with the Recorder, and the control:
no false alarm on the project's clean sample runs.

Planted: Adam's state cleared in-run at step K; a resumed run that starts from trained weights
with an empty Adam state; a scheduler that jumps the lr ×25 at step K; the last partial batch
of 3 (vs 32) of every epoch, with a loss normalised by the batch size twice. Each must get its
verdict and the right numbers. Where the current detector does not find a spike at a run's
first steps, the rule is judged on a spike placed there by hand (`pretend`), through the same
engines and view as the pipeline.
"""

import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from forensics import Recorder
from forensics.analyzer import pipeline
from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure import METRICS
from forensics.analyzer.mechanisms import engines_for
from forensics.analyzer.rules import SPECS
from forensics.rundir.reader import open_run
from forensics.rundir.spikes import Spike

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"
EVERYDAY = ("optimizer_state_reset", "hyperparameter_jump", "short_batch")
CLEAN = ("clean_gd", "clean_sgd", "large_batch", "adam_control")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mlp(width, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                               torch.nn.Tanh(), torch.nn.Linear(width, 1))


def regression(n, bs=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 1, generator=g)
    for _ in range(n):
        x = torch.randn(bs, 8, generator=g)
        yield x, torch.sin(x @ w) + 0.05 * torch.randn(bs, 1, generator=g)


def train(model, opt, batches, rec=None, before_step=None, sched=None):
    for t, (x, y) in enumerate(batches):
        if before_step:
            before_step(t)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if rec is not None:
            rec.observe(loss, {"x": x, "y": y})
        opt.step()
        if sched is not None:
            sched.step()


def pretend(run, onset, end, rules=EVERYDAY):
    """Findings of `rules` on a spike placed by hand at onset..end of `run` (a directory or an
    opened Run), measured and judged as the pipeline does (with its snapshots when the onset was
    captured, else from steps/)."""
    run = open_run(run) if isinstance(run, (str, Path)) else run
    spike = Spike(spike_id=0, onset=onset, peak=onset, end=end, peak_loss=1.0, baseline=1.0, magnitude=1.0)
    ev = Evidence(pipeline._context(run, spike, "pretend"), catalog=METRICS)
    engines = engines_for(rules)
    try:
        scene = pipeline._scene(run, ev.context, "offline", None, "no model (pretend spike)",
                                pipeline.Settings(), torch.device("cpu"))
    except LookupError:
        pipeline._measure_from_steps(ev, run, engines)
    else:
        ev.context = scene.context
        pipeline._measure(ev, scene, engines, None)
    return {r: SPECS[r].run(ev) for r in rules}


def drawn(monkeypatch, spike, rule) -> int:
    """How many charts the spike page draws for `rule`'s panel from this spike's measurements."""
    pytest.importorskip("streamlit")
    import pandas as pd

    from forensics.app import panels

    charts = []
    monkeypatch.setattr(panels.ui, "show_chart", lambda chart, **kw: charts.append(chart))
    c = spike.context
    m = pd.DataFrame(spike.evidence.rows, columns=["step", "engine", "metric", "value"])
    frames = panels.SpikeFrames(root="", run={"path": ""}, m=m, steps=pd.DataFrame({"step": []}),
                                spike={"onset_step": c.onset, "peak_step": c.peak, "end_step": c.end},
                                snaps=pd.DataFrame({"step": []}))
    panels.draw_finding(rule, frames)
    return len(charts)


def verdicts(result):
    return [(s.context.onset, s.verdict) for s in result.spikes]


# ------------------------------------------------------------------ optimizer_state_reset

def test_adam_state_cleared_in_run_is_named_with_the_step(tmp_path, monkeypatch):
    k = 300
    model = mlp(256)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rec = Recorder(model, opt, tmp_path / "run", loss="mse")
    train(model, opt, regression(k + 60), rec, before_step=lambda t: t == k and opt.state.clear())
    rec.close()
    result = pipeline.analyze(tmp_path / "run", model=model)
    after = [s for s in result.spikes if k <= s.context.onset <= k + 12]
    assert after, verdicts(result)
    spike = after[0]
    assert spike.verdict == "optimizer_state_reset", spike.verdict_message
    f = next(f for f in spike.findings if f.rule == "optimizer_state_reset")
    assert f.evidence["reset_step"] == k and f.evidence["counter_before"] == k
    assert f.evidence["counter_after"] == 1
    assert f.evidence["update_norm_jump"] > 5 and f.evidence["lr_sized_share"] > 0.9
    assert f"reset at step {k}" in f.message and "0.003" in f.hint
    # spikes before the reset are not called a reset
    assert all(s.verdict != "optimizer_state_reset" for s in result.spikes if s.context.onset < k)
    assert drawn(monkeypatch, spike, "optimizer_state_reset") == 3  # update norms, counter, lr


def test_resumed_run_with_trained_weights_and_empty_state(tmp_path):
    trained = mlp(256)
    train(trained, torch.optim.Adam(trained.parameters(), lr=3e-3), regression(300))
    for name, model in (("resumed", trained), ("fresh", mlp(256, seed=3))):
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)  # the resume forgot the optimizer state
        rec = Recorder(model, opt, tmp_path / name, loss="mse")
        train(model, opt, regression(40, seed=7), rec)
        rec.close()
    got = pretend(tmp_path / "resumed", onset=1, end=8)["optimizer_state_reset"]
    assert got.status == "fired", got.message
    assert got.evidence["run_start"] == 0 and got.evidence["init_spectral_ratio"] > 2
    control = pretend(tmp_path / "fresh", onset=1, end=8)["optimizer_state_reset"]
    assert control.status == "not_fired" and control.evidence["init_spectral_ratio"] < 1.2


# ------------------------------------------------------------------ hyperparameter_jump

def test_scheduler_jumping_the_lr_x25_is_named_with_old_new_and_step(tmp_path, monkeypatch):
    k = 200

    def schedule(step):  # cosine 1 -> 0.04 over k steps, then a rebuilt schedule ×25
        return 1.0 if step >= k else 0.04 + 0.96 * 0.5 * (1 + math.cos(math.pi * step / k))

    model = mlp(64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    rec = Recorder(model, opt, tmp_path / "run", loss="mse")
    train(model, opt, regression(k + 100), rec, sched=sched)
    rec.close()
    result = pipeline.analyze(tmp_path / "run", model=model)
    after = [s for s in result.spikes if k <= s.context.onset <= k + 50]
    assert after, verdicts(result)
    assert after[0].verdict == "hyperparameter_jump", after[0].verdict_message
    f = next(f for f in after[0].findings if f.rule == "hyperparameter_jump")
    assert f.evidence["step"] == k and f.evidence["hparam"] == "lr"
    assert f.evidence["factor"] == pytest.approx(1 / schedule(k - 1), rel=1e-6)
    assert f.evidence["new"] == pytest.approx(0.1)
    assert f"learning rate jumped ×{f.evidence['factor']:.3g} at step {k} (schedule, " in f.message
    assert all(s.verdict != "hyperparameter_jump" for s in result.spikes if s.context.onset < k)
    assert drawn(monkeypatch, after[0], "hyperparameter_jump") == 1


def test_a_change_between_snapshots_is_located_to_its_step_from_steps_param_groups(tmp_path):
    """β₂ of the second param group edited at step K, which no snapshot holds: steps/ param_groups
    (one JSON list per step) locate it to K, with old and new value; nothing fires before it."""
    k = 173
    model = mlp(32)
    opt = torch.optim.Adam([{"params": model[0].parameters()},
                            {"params": list(model[2].parameters()) + list(model[4].parameters())}], lr=1e-3)

    def edit(t):
        if t == k:
            opt.param_groups[1]["betas"] = (0.9, 0.9)

    rec = Recorder(model, opt, tmp_path / "run", loss="mse")
    train(model, opt, regression(k + 40), rec, before_step=edit)
    rec.close()
    run = open_run(tmp_path / "run")
    assert k not in {i.step for i in run.snapshots}
    f = pretend(run, k + 5, k + 7, rules=("hyperparameter_jump",))["hyperparameter_jump"]
    assert f.fired, f.message
    got = (f.evidence["hparam"], f.evidence["group"], f.evidence["step"], f.evidence["since"])
    assert got == ("beta2", 1, k, k - 1)
    assert (f.evidence["old"], f.evidence["new"]) == (0.999, 0.9)
    assert f"β₂ of param group 1 jumped (1 − β₂ ×100) at step {k} (0.999 → 0.9)" in f.message
    assert not pretend(run, k - 2, k, rules=("hyperparameter_jump",))["hyperparameter_jump"].fired


# ------------------------------------------------------------------ short_batch

def test_last_partial_batch_of_each_epoch_is_named_with_size_and_period(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32 * 12 + 3, 8, generator=g)
    y = torch.sin(x @ torch.randn(8, 1, generator=g) * 0.5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True,
                                         drop_last=False, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    rec = Recorder(model, opt, tmp_path / "run", loss="mse", probe=None)  # detection on the minibatch loss
    for _ in range(20):
        for xb, yb in loader:
            opt.zero_grad()
            out = model(xb)
            loss = ((out - yb) ** 2).sum() / out.shape[0] ** 2 * 32  # summed, normalised twice
            loss.backward()
            rec.observe(loss, {"x": xb, "y": yb})
            opt.step()
    rec.close()
    result = pipeline.analyze(tmp_path / "run", model=model)
    assert result.spikes
    steps_per_epoch = 13
    for spike in result.spikes:
        assert spike.context.onset % steps_per_epoch == steps_per_epoch - 1, verdicts(result)
        assert spike.verdict == "short_batch", spike.verdict_message
        f = next(f for f in spike.findings if f.rule == "short_batch")
        assert (f.evidence["batch_rows"], f.evidence["usual"]) == (3, 32)
        assert f.evidence["period"] == steps_per_epoch
    assert drawn(monkeypatch, result.spikes[0], "short_batch") == 1


def test_short_batch_spikes_past_the_snapshot_budget_are_judged_from_steps(tmp_path):
    """With room for the snapshots of 2 spikes only, the later epochs' spikes have no onset
    snapshot: their batch size and the period still come from steps/ batch_rows."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32 * 12 + 3, 8, generator=g)
    y = torch.sin(x @ torch.randn(8, 1, generator=g) * 0.5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True,
                                         drop_last=False, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    rec = Recorder(model, opt, tmp_path / "run", loss="mse", probe=None, max_spikes=2)
    for _ in range(12):
        for xb, yb in loader:
            opt.zero_grad()
            out = model(xb)
            loss = ((out - yb) ** 2).sum() / out.shape[0] ** 2 * 32
            loss.backward()
            rec.observe(loss, {"x": xb, "y": yb})
            opt.step()
    rec.close()
    run = open_run(tmp_path / "run")
    captured = {i.step for i in run.snapshots}
    result = pipeline.analyze(tmp_path / "run", model=model)
    late = [s for s in result.spikes if s.context.onset not in captured]
    assert len(late) >= 3, verdicts(result)
    for spike in late:
        assert spike.verdict == "short_batch", spike.verdict_message
        f = next(f for f in spike.findings if f.rule == "short_batch")
        assert (f.evidence["batch_rows"], f.evidence["usual"], f.evidence["period"]) == (3, 32, 13)
        assert f.evidence["short_batches"] == 12  # every epoch's, not only the captured ones


# ------------------------------------------------------------------ control

@pytest.mark.parametrize("name", CLEAN)
def test_no_false_alarm_on_the_clean_sample_runs(name, tmp_path):
    """Every 5th step and every snapshot step of a clean run as a pretend onset: none fires.
    (With max_lag ≥ 32 and a stride of 5, every recorded change lies in several windows.)"""
    run_dir = tmp_path / name
    shutil.copytree(SAMPLES / name, run_dir, ignore=shutil.ignore_patterns("analysis"))
    run = open_run(run_dir)
    steps = run.steps.column("step").to_pylist()
    onsets = sorted(set(steps[::5]) | {i.step for i in run.snapshots})
    fired = []
    for onset in onsets:
        for rule, f in pretend(run, onset, onset + 2, rules=EVERYDAY + ("numerical",)).items():
            assert f.status != "inconclusive" or rule != "hyperparameter_jump", (onset, f.message)
            if f.fired:
                fired.append((onset, rule, f.message))
    assert len(onsets) > 40
    assert fired == []


def test_last_partial_batch_through_the_lightning_callback(tmp_path):
    """The same kind through the Lightning adapter (the field case's setting, fewer epochs)."""
    lightning = pytest.importorskip("lightning.pytorch")
    import warnings

    from forensics.integrations.lightning import SpikeForensicsCallback

    def loss_fn(out, y):  # normalised by B twice: the 3-sample batch's loss is ×32/3 too large
        return ((out - y) ** 2).sum() / out.shape[0] ** 2 * 32

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))

        def training_step(self, batch, i):
            return loss_fn(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.003, momentum=0.9)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(32 * 12 + 3, 8, generator=g)
    data = torch.utils.data.TensorDataset(x, torch.sin(x @ torch.randn(8, 1, generator=g) * 0.5))
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, drop_last=False,
                                         generator=torch.Generator().manual_seed(2))
    module = Module()
    # one spike per epoch (30): a snapshot budget for each, so none is left not_analyzed
    callback = SpikeForensicsCallback(str(tmp_path / "run"), loss=loss_fn, module="net", probe=None,
                                      max_spikes=40)
    quiet = dict(enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = lightning.Trainer(accelerator="cpu", devices=1, max_epochs=30, logger=False,
                                callbacks=[callback],
                                **quiet)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    result = pipeline.analyze(tmp_path / "run", model=module.net)
    assert result.spikes
    for spike in result.spikes:
        assert spike.verdict == "short_batch", (verdicts(result), spike.verdict_message)
        f = next(f for f in spike.findings if f.rule == "short_batch")
        assert (f.evidence["batch_rows"], f.evidence["usual"], f.evidence["period"]) == (3, 32, 13)


def test_last_partial_batch_through_the_hugging_face_callback(tmp_path):
    """The same kind through the Hugging Face Trainer callback: a plain torch module whose forward
    returns {"loss": ...} (normalised by B twice), the Trainer's own shuffled loader with
    drop_last=False, 13 steps per epoch."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import warnings

    from forensics.integrations.huggingface import SpikeForensicsTrainerCallback

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))

        def forward(self, x, y):
            out = self.net(x)
            return {"loss": ((out - y) ** 2).sum() / out.shape[0] ** 2 * 32, "logits": out}

    class Data(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(1)
            self.x = torch.randn(32 * 12 + 3, 8, generator=g)
            self.y = torch.sin(self.x @ torch.randn(8, 1, generator=g) * 0.5)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"x": self.x[i], "y": self.y[i]}

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=32, num_train_epochs=20,
        lr_scheduler_type="constant", max_grad_norm=0.0, logging_strategy="no", save_strategy="no",
        report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0)
    callback = SpikeForensicsTrainerCallback(tmp_path / "run", batch_keys=("x", "y"), loss="mse",
                                             model_factory=None, probe=None)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), optimizers=(opt, None),
                                   callbacks=[callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    run = open_run(tmp_path / "run")
    rows = dict(zip(run.steps.column("step").to_pylist(), run.steps.column("batch_rows").to_pylist(),
                    strict=True))
    short = sorted(s for s, r in rows.items() if r == 3)
    assert short == list(range(12, 20 * 13, 13))  # the Trainer's last batch of each epoch
    result = pipeline.analyze(tmp_path / "run", mechanisms=["short_batch", "data", "numerical"])
    epoch_spikes = [s for s in result.spikes if s.context.onset in short or s.context.onset - 1 in short]
    assert len(epoch_spikes) >= 5, verdicts(result)
    for spike in epoch_spikes:
        assert spike.verdict == "short_batch", (verdicts(result), spike.verdict_message)
        f = next(f for f in spike.findings if f.rule == "short_batch")
        assert (f.evidence["batch_rows"], f.evidence["usual"], f.evidence["period"]) == (3, 32, 13)


def test_a_huge_gradient_with_the_counter_running_on_is_not_a_reset(tmp_path):
    """examples/ddp.py in one process: half of step 90's batch has targets ×1000, so g² ≫ v and
    v ≈ (1 − β₂)·g² on most coordinates, as after a reset; the step counter in steps/ runs on, so
    optimizer_state_reset must not fire (the batch is the cause: `data`). Control: the same loop
    with Adam's state cleared before step 90 is a reset."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import ddp as example

    example.train(0, 1, tmp_path / "bad", steps=110, spike_at=90, data_world=2)
    found = pretend(tmp_path / "bad", 90, 91, rules=("optimizer_state_reset",))["optimizer_state_reset"]
    assert found.status == "not_fired", found.message

    model = example.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with Recorder(model, opt, tmp_path / "clear", loss="mse", probe=None) as rec:
        for t in range(110):
            x, y = example.global_batch(t, 2, None)
            if t == 90:
                opt.state.clear()
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            rec.observe(loss, {"x": x, "y": y})
            opt.step()
    found = pretend(tmp_path / "clear", 90, 92, rules=("optimizer_state_reset",))["optimizer_state_reset"]
    assert found.fired, found.message


def test_an_lr_jump_that_ends_in_nan_is_the_jump_not_numerical(tmp_path):
    """SGD+momentum, the lr ×10 for good at step 150 (set directly): the loss climbs, then goes
    non-finite. `numerical` fires (where the values went non-finite), but the verdict is the jump,
    which is the cause. Control: the same run without the jump has no spike at all."""
    from forensics.analyzer.pipeline import analyze

    def run(jump: bool):
        model = mlp(32)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        path = tmp_path / ("jump" if jump else "control")
        with Recorder(model, opt, path, loss="mse", probe=None) as rec:
            train(model, opt, regression(260), rec,
                  before_step=lambda t: jump and t == 150 and [g.update(lr=g["lr"] * 10)
                                                                for g in opt.param_groups])
        return path

    control = run(False)
    assert open_run(control).spikes == []
    result = analyze(run(True), model=mlp(32), loss_fn=F.mse_loss, write=False)
    spike = result.spikes[0]
    fired = {f.rule for f in spike.findings if f.fired}
    assert 150 <= spike.context.onset <= 200, spike.context
    assert spike.verdict == "hyperparameter_jump", spike.verdict_message
    assert "×10 at step 150" in spike.verdict_message and "set directly" in spike.verdict_message
    assert {"numerical", "hyperparameter_jump"} <= fired
