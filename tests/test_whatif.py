"""Counterfactual replay (forensics.whatif): a planted known answer computed by hand, the
self-check catching what a replay cannot know, gaps in the recorded batches, and change parsing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from forensics.record.recorder import Recorder
from forensics.rundir.reader import open_run
from forensics.whatif import ChangeError, parse_change, whatif

SPIKE_AT, STEPS = 70, 90


def _data(n=STEPS, bs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(n):
        x = torch.randn(bs, 1, generator=g)
        y = 2.0 * x + 1.0 + 0.05 * torch.randn(bs, 1, generator=g)
        out.append((x, y * 50.0 if t == SPIKE_AT else y))  # a planted bad batch
    return out


def _lr(t):
    return 0.05 * (1.0 + 0.01 * t)  # a schedule: the replay must use each step's own lr


def _record(path, data, *, clip=None, report_clip=None, model=None, stride=1, ring_size=4):
    torch.manual_seed(0)
    model = model or torch.nn.Sequential(torch.nn.Linear(1, 1))
    opt = torch.optim.SGD(model.parameters(), lr=_lr(0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: _lr(k) / _lr(0))
    with Recorder(model, opt, path, model_factory="forensics.zoo.models:mlp", model_kwargs={"sizes": [1, 1]},
                  ring_size=ring_size, tail=4, baseline_every=0, stride=stride) as rec:
        for x, y in data:
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            clipped = None
            if clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                clipped = bool(norm > clip) if report_clip else None  # what the loop reports
            rec.observe(loss, {"x": x, "y": y}, grad_clipped=clipped)
            opt.step()
            sched.step()
    return open_run(path)


def _by_hand(w, b, data, steps, *, skip=(), lr_factor=1.0):
    """SGD on f(x) = w x + b with mean squared error, in float64: the losses of `steps`."""
    losses = []
    for t in steps:
        x, y = (v.double().flatten().tolist() for v in data[t])
        r = [w * xi + b - yi for xi, yi in zip(x, y, strict=True)]
        if t in skip:
            losses.append(None)
            continue
        losses.append(sum(ri * ri for ri in r) / len(r))
        dw = sum(2 * ri * xi for ri, xi in zip(r, x, strict=True)) / len(r)
        db = sum(2 * ri for ri in r) / len(r)
        w, b = w - lr_factor * _lr(t) * dw, b - lr_factor * _lr(t) * db
    return losses


def _close(replayed, expected, rtol=1e-4):
    """float32 replay against float64 by hand: residuals ~0.03 on values ~3 leave ~1e-5 relative."""
    assert len(replayed) == len(expected)
    for a, e in zip(replayed, expected, strict=True):
        assert (a is None) == (e is None)
        if e is not None:
            assert a == pytest.approx(e, rel=rtol)


def test_known_answer_sgd_replay_and_counterfactuals(tmp_path):
    data = _data()
    run = _record(tmp_path / "run", data)
    (spike,) = run.spikes
    assert spike.onset == SPIKE_AT
    result = whatif(run, spike.spike_id, ["skip_batch=70", "lr=x0.5"])
    start = run.snapshot(result.steps[0]).load()
    w0, b0 = float(start.params["0.weight"]), float(start.params["0.bias"])
    assert result.steps[0] < SPIKE_AT and result.steps == list(range(result.steps[0], result.steps[-1] + 1))
    assert result.reproduced and result.replay_error <= 1e-4
    _close(result.replay_losses, _by_hand(w0, b0, data, result.steps))
    skip, half = result.changes
    _close(skip.losses, _by_hand(w0, b0, data, result.steps, skip={SPIKE_AT}))
    _close(half.losses, _by_hand(w0, b0, data, result.steps, lr_factor=0.5))
    # the planted batch is the spike: skipping it removes it, halving the lr does not
    assert skip.spike_gone and skip.recover_steps == 0
    assert not half.spike_gone and half.recorded_peak_ratio > 100
    assert skip.peak_ratio < 10 and half.peak_ratio > 1000  # minibatch noise alone reaches ×4


def test_unreported_clipping_does_not_reproduce_and_says_why(tmp_path):
    run = _record(tmp_path / "run", _data(), clip=0.5, report_clip=None)
    result = whatif(run, run.spikes[0].spike_id, ["skip_batch=70"])
    assert not result.reproduced and result.replay_error > 1e-4
    assert "does not reproduce from its snapshot" in result.diagnosis
    assert "clipped" in result.diagnosis and result.changes == []


def test_reported_clipping_reproduces(tmp_path):
    run = _record(tmp_path / "run", _data(), clip=0.5, report_clip=True)
    result = whatif(run, run.spikes[0].spike_id, ["skip_batch=70"])
    assert result.reproduced, result.diagnosis
    assert any("max-norm 0.5" in n for n in result.notes)


def test_dropout_does_not_reproduce_and_is_named(tmp_path):
    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))

    run = _record(tmp_path / "run", _data(), model=net())
    result = whatif(run, run.spikes[0].spike_id, ["skip_batch=70"], model=net())
    assert not result.reproduced
    assert "dropout" in result.diagnosis


def test_stride_gap_is_named(tmp_path):
    run = _record(tmp_path / "run", _data(), stride=3, ring_size=12)  # pre-onset slots 60, 63, 66, 69
    result = whatif(run, run.spikes[0].spike_id, ["skip_batch=70"])
    assert result.steps[0] == 69  # the consecutive stretch through the onset
    assert any("batches not recorded for steps 61..62, 64..65, 67..68" in n and "stride = 3" in n
               for n in result.notes)
    assert result.reproduced and result.changes[0].spike_gone


def test_dense_recording_window_has_no_gap(tmp_path):
    data = _data()
    run = _record(tmp_path / "run", data)
    from forensics.replay import spike_window

    win = spike_window(run, 0)
    assert win.reaches_peak and not win.missing


def test_change_that_does_not_apply(tmp_path):
    run = _record(tmp_path / "run", _data())
    with pytest.raises(ChangeError, match="no 'betas'"):
        whatif(run, 0, ["beta2=0.95"])
    with pytest.raises(ChangeError, match="not in the replayed window"):
        whatif(run, 0, ["skip_batch=3"])
    with pytest.raises(ChangeError, match="nothing to restore"):
        whatif(run, 0, ["restore_optimizer"])
    with pytest.raises(KeyError, match="no spike 7"):
        whatif(run, 7, ["lr=x0.5"])


@pytest.mark.parametrize("text, words", [("beta2=0.95", "beta2=0.95"), ("lr=x0.5", "lr=x0.5"),
                                         ("eps=1e-6+clip=1", "eps=1e-06+clip=1"), ("lr=hold", "lr=hold"),
                                         ("skip_batch=400", "skip_batch=400"),
                                         ("restore_optimizer", "restore_optimizer")])
def test_parse_change(text, words):
    assert parse_change(text).text == words


@pytest.mark.parametrize("bad", ["", "beta3=1", "lr=", "lr=abc", "beta2=1.5", "clip=0", "skip_batch=x2",
                                 "eps=-1", "lr=nan"])
def test_parse_change_refuses(bad):
    with pytest.raises(ChangeError):
        parse_change(bad)


def test_apply_groups_relative_absolute_and_hold():
    groups = [{"lr": 0.1, "betas": [0.9, 0.999], "eps": 1e-8, "params": ["a"]}]
    first = [{"lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8, "params": ["a"]}]
    out = parse_change("lr=x0.5+beta2=0.95+eps=1e-6").apply_groups(groups)[0]
    assert out["lr"] == pytest.approx(0.05) and out["betas"] == [0.9, 0.95] and out["eps"] == 1e-6
    assert parse_change("lr=hold").apply_groups(groups, first)[0]["lr"] == 0.01
    assert groups[0]["lr"] == 0.1  # not changed in place
    assert math.isclose(parse_change("eps=x1000").apply_groups(groups)[0]["eps"], 1e-5)


def _record_reset(path, reset_at=1000, steps=1030):
    """Adam on a small tanh MLP; at `reset_at` the optimizer state is cleared (a resume that lost it)."""
    from forensics.zoo.models import mlp

    torch.manual_seed(0)
    model = mlp([3, 16, 1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x.sum(1, keepdim=True).sin()
    with Recorder(model, opt, path, model_factory="forensics.zoo.models:mlp",
                  model_kwargs={"sizes": [3, 16, 1]},
                  ring_size=4, tail=8, baseline_every=0) as rec:
        for t in range(steps):
            if t == reset_at:
                opt.state.clear()
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            rec.observe(loss, {"x": x, "y": y})
            opt.step()
    return open_run(path)


def test_optimizer_reset_is_replayed_and_restoring_it_removes_the_spike(tmp_path):
    run = _record_reset(tmp_path / "run")
    spike = run.spikes[-1]  # (Adam's own small edge-of-stability spikes come before it)
    assert spike.onset == 1001 and spike.magnitude > 1000  # the first update after the reset is a sign step
    result = whatif(run, spike.spike_id, ["restore_optimizer", "lr=x0.5"])
    assert result.reproduced and result.replay_error <= 1e-4, result.diagnosis
    restore, half = result.changes
    assert restore.spike_gone and restore.peak_ratio < 1.5
    assert not half.spike_gone


class MySGD(torch.optim.SGD):
    """A user's optimizer class: run.json names it by an import path outside torch.optim."""


def test_optimizer_class_resolves_only_inside_torch_optim(tmp_path):
    from forensics.replay import resolve_optimizer_class

    assert resolve_optimizer_class("torch.optim.adam.Adam") is torch.optim.Adam
    assert resolve_optimizer_class("torch.optim.AdamW") is torch.optim.AdamW
    for path in ("os.system", "subprocess.Popen", f"{__name__}.MySGD"):
        with pytest.raises(PermissionError, match="not one of torch.optim's own classes"):
            resolve_optimizer_class(path)
    with pytest.raises(ValueError, match="not a torch.optim.Optimizer subclass"):
        resolve_optimizer_class("collections.OrderedDict", allow_import=True)

    model = torch.nn.Sequential(torch.nn.Linear(1, 1))
    opt = MySGD(model.parameters(), lr=0.05)
    with Recorder(model, opt, tmp_path / "run", model_factory="forensics.zoo.models:mlp",
                  model_kwargs={"sizes": [1, 1]}, ring_size=4, tail=2, baseline_every=0) as rec:
        for x, y in _data():
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            rec.observe(loss, {"x": x, "y": y})
            opt.step()
    with pytest.raises(PermissionError, match="MySGD"):
        whatif(tmp_path / "run", 0, ["skip_batch=70"])


def test_a_live_model_is_copied_not_changed(tmp_path):
    run = _record(tmp_path / "run", _data())
    live = torch.nn.Sequential(torch.nn.Linear(1, 1))
    before = [p.detach().clone() for p in live.parameters()]
    result = whatif(run, 0, ["lr=x0.5"], model=live)
    assert result.reproduced
    assert all(torch.equal(a, b) for a, b in zip(before, live.parameters(), strict=True))


def test_a_corrupt_snapshot_in_the_window_is_named_with_exit_3(tmp_path):
    from typer.testing import CliRunner

    from forensics import cli
    from forensics.rundir.format import CorruptFileError, snapshot_name

    run = _record(tmp_path / "run", _data())
    peak = run.spikes[0].peak
    broken = tmp_path / "run" / "snapshots" / snapshot_name(peak)
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(CorruptFileError) as e:
        whatif(open_run(tmp_path / "run"), 0, ["skip_batch=70"])
    assert e.value.path == broken and "unreadable" in str(e.value)
    r = CliRunner().invoke(cli.app, ["whatif", str(tmp_path / "run"), "--spike", "0", "--change",
                                     "skip_batch=70", "--no-save"])
    assert r.exit_code == 3, r.output
    assert r.stderr.startswith(f"error: {broken}: unreadable")


def _record_lr_pulse(path, *, pulse=True, at=300, steps=360):
    """SGD+momentum on minibatches of a fixed task, the default auto probe and detector signal
    ("auto"); with `pulse`, the lr ×10 for steps at..at+2 (set directly, then put back)."""
    from forensics.zoo.models import mlp

    torch.manual_seed(0)
    sizes = [4, 32, 32, 1]
    model = mlp(sizes)
    x_all = torch.randn(2048, 4, generator=torch.Generator().manual_seed(5))
    y_all = (x_all[:, :1] * x_all[:, 1:2]).sin() + 0.5 * x_all[:, 2:3]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    with Recorder(model, opt, path, model_factory="forensics.zoo.models:mlp", model_kwargs={"sizes": sizes},
                  loss="mse") as rec:
        for t in range(steps):
            idx = torch.randint(0, 2048, (32,), generator=g)
            if pulse and t in (at, at + 3):
                for group in opt.param_groups:
                    group["lr"] = group["lr"] * 10 if t == at else group["lr"] / 10
            opt.zero_grad()
            loss = F.mse_loss(model(x_all[idx]), y_all[idx])
            loss.backward()
            rec.observe(loss, {"x": x_all[idx], "y": y_all[idx]})
            opt.step()
    return open_run(path)


def test_a_probe_watched_spike_is_judged_on_the_reference_loss(tmp_path):
    """Detector signal "auto" watches the probe once drawn: the spike it found must be judged on
    the reference loss, not by the minibatch-loss detector (which sees no spike there)."""
    run = _record_lr_pulse(tmp_path / "run")
    spike = next(s for s in run.spikes if 300 <= s.onset <= 303)
    assert spike.signal == "probe"
    result = whatif(run, spike.spike_id, ["lr=hold", "lr=x1"])
    assert result.reproduced and result.curve == "reference" and result.spike_visible
    held, same = result.changes
    assert held.spike_gone and held.peak_ratio < 1.5 < held.recorded_peak_ratio  # lr before the pulse
    assert not same.spike_gone  # control: the recorded lr replays the spike
