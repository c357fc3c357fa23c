"""The `data` rule on recorded runs: a planted bad batch, a short batch once per epoch, and a
heavy-tailed control whose ordinary tail batches must not be called bad data.

Each run is recorded here with the Recorder (tiny MLPs, ~3 s each) and analyzed with the live
model and loss."""

import shutil

import pytest
import torch

from forensics import Recorder, analyze


def mse(out, y):
    return ((out - y) ** 2).mean()


def size_dependent_loss(out, y):
    """Normalised by B twice (the Lightning field case): a 3-row batch is ×32/3 too large."""
    b = out.shape[0]
    return ((out - y) ** 2).sum() / (b * b) * 32


def _stream(root, *, cauchy_scale=0.0, bad_step=None, steps=400):
    """Fresh minibatches each step; targets with Cauchy noise of `cauchy_scale`; the labels
    of `bad_step` ×10 (a corrupted batch)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 1, generator=g)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    rec = Recorder(net, opt, root, loss="mse", probe=None)  # the rule under test, on minibatch-loss detection
    noise = torch.distributions.StudentT(torch.tensor(1.0))
    for step in range(steps):
        x = torch.randn(32, 8, generator=g)
        y = torch.sin(x @ w * 0.5) + cauchy_scale * noise.sample((32, 1))
        if step == bad_step:
            y = y * 10
        opt.zero_grad()
        loss = mse(net(x), y)
        loss.backward()
        rec.observe(loss, {"x": x, "y": y})
        opt.step()
    rec.close()
    return net


def _epochs(root):
    """12 full batches of 32 and one of 3 per epoch, a batch-size-dependent loss, SGD momentum."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    n = 32 * 12 + 3
    x = torch.randn(n, 8, generator=g)
    y = torch.sin(x @ torch.randn(8, 1, generator=g) * 0.5)
    net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.003, momentum=0.9)
    rec = Recorder(net, opt, root, loss=size_dependent_loss, probe=None)
    for _ in range(25):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            loss = size_dependent_loss(net(x[idx]), y[idx])
            loss.backward()
            rec.observe(loss, {"x": x[idx], "y": y[idx]})
            opt.step()
    rec.close()
    return net


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_rule")
    torch.set_num_threads(1)
    out = {}
    for name, make, kw in (("planted", _stream, {"bad_step": 300}),
                           ("heavy", _stream, {"cauchy_scale": 0.003}),
                           ("short", _epochs, {})):
        net = make(root / name, **kw)
        loss_fn = size_dependent_loss if name == "short" else None
        out[name] = analyze(root / name, model=net, loss_fn=loss_fn, mechanisms=["data"],
                            write=False)
    yield out
    shutil.rmtree(root, ignore_errors=True)


def _data(spike):
    return next(f for f in spike.findings if f.rule == "data")


def test_a_planted_bad_batch_is_data(runs):
    spike = next(s for s in runs["planted"].spikes if s.context.onset == 300)
    f = _data(spike)
    assert spike.verdict == "data" and f.evidence["robust_z"] >= 4, f.message
    assert f.evidence["history_excursions"] == 0 and f.evidence["neighbor_outliers"] == 0
    assert "batch/*" in f.hint and "drop_last" not in f.hint  # a full-size batch: no short-batch advice


def test_heavy_tailed_ordinary_batches_are_not_bad_data(runs):
    """Control: with Cauchy label noise, spikes come from ordinary tail batches. Several are
    ≥ 3× the median at the onset weights (the old ×3 rule called them data); none is data now."""
    spikes = runs["heavy"].spikes
    tail = [s for s in spikes if _data(s).evidence.get("ratio", 0) >= 3
            and (_data(s).evidence.get("robust_z") or 0) >= 4]
    assert tail, "the control must contain tail batches the old rule would call bad"
    assert not [s.context.onset for s in spikes if s.verdict == "data"]
    assert all("heavy-tailed" in _data(s).message for s in tail)


def test_a_short_batch_once_per_epoch_is_named_with_its_size_and_period(runs):
    data = [s for s in runs["short"].spikes if s.verdict == "data"]
    assert len(data) >= 3
    for s in data:
        f = _data(s)
        assert (s.context.onset + 1) % 13 == 0, s.context.onset  # the 13th batch of an epoch
        assert f.evidence["batch_rows"] == 3 and f.evidence["usual_rows"] == 32
        assert "3 rows vs the run's usual 32" in f.message
        assert f.evidence["recurrence_period"] == 13 and "every 13 steps" in f.message
        assert "drop_last=True" in f.hint


def test_the_stated_false_alarm_count_holds(runs):
    """The `data` spec's false_alarms ("0 of N ... (a in a Cauchy-noise stream, b in a clean
    stream, c ... in the short-batch run") is what these recorded controls measure."""
    import re

    from forensics.analyzer.rules.data import SPEC

    stated = [int(n) for n in re.findall(r"\d+", SPEC.false_alarms)[:5]]
    heavy = list(runs["heavy"].spikes)
    clean = [s for s in runs["planted"].spikes if s.context.onset != 300]
    short = [s for s in runs["short"].spikes if (s.context.onset + 1) % 13]
    ordinary = heavy + clean + short
    assert stated == [0, len(ordinary), len(heavy), len(clean), len(short)]
    assert not [s.context.onset for s in ordinary if s.verdict == "data"]
