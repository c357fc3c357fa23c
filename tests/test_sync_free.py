"""The recorder's hot path does not read device values on the host in a normal step: losses and per-step
scalars are fetched every `sync_every` steps in one transfer, and a spike is still captured with its onset."""

import sys

import pytest
import torch
import torch.nn.functional as F

from forensics import Recorder, open_run

READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


class HostReads:
    """Counts host reads of tensor values (`.item()`, `.tolist()`, `.cpu()`, `float(t)`, ...) made by
    forensics code (the first frame outside torch), per step of the training loop."""

    def __init__(self, monkeypatch):
        self.count = 0
        self.where: list[str] = []
        for name in READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(original, name))

    def _wrap(self, original, name):
        def read(t, *args, **kwargs):
            f = sys._getframe(1)
            while f is not None and "/torch/" in f.f_code.co_filename:
                f = f.f_back
            if f is not None and "/forensics/" in f.f_code.co_filename:
                self.count += 1
                self.where.append(f"{name} at {f.f_code.co_filename}:{f.f_lineno}")
            return original(t, *args, **kwargs)
        return read


def _run(path, *, sync_every, onset=70, steps=100, after=False, reads=None, **options):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    px = torch.randn(64, 3, generator=g)
    per_step = []
    with Recorder(model, opt, path, ring_size=6, tail=3, baseline_every=0, sync_every=sync_every,
                  probe={"x": px, "y": px.sum(1, keepdim=True).sin()}, **options) as rec:
        for t in range(steps):
            x = torch.randn(8, 3, generator=g)
            y = x.sum(1, keepdim=True).sin() * (1000.0 if t == onset else 1.0)
            before = reads.count if reads is not None else 0
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            if not after:
                rec.observe(loss, {"x": x, "y": y})
            opt.step()
            if after:
                rec.observe(loss, {"x": x, "y": y})
            per_step.append((reads.count - before) if reads is not None else 0)
    return open_run(path), per_step


@pytest.mark.parametrize("after", [False, True], ids=["observe-before-step", "observe-after-step"])
def test_no_host_read_in_a_normal_step(tmp_path, monkeypatch, after):
    reads = HostReads(monkeypatch)
    run, per_step = _run(tmp_path / "run", sync_every=8, reads=reads, after=after)
    monkeypatch.undo()
    # a step whose loss completes a batch of 8 fetches (one .tolist()), and spike steps write snapshots
    # (copies to the host); every other step reads nothing on the host
    snap_steps = {s.step for s in run.snapshots}
    drains = {t for t in range(100) if (t + 1) % 8 == 0}
    normal = [t for t in range(100) if t not in drains and t not in snap_steps and not 62 <= t <= 80]
    assert len(normal) > 60
    assert [per_step[t] for t in normal] == [0] * len(normal), reads.where[:5]
    assert all(per_step[t] >= 1 for t in drains if t < 60)  # the fetch itself is counted: the counter works


def test_lagged_detection_captures_the_same_snapshots(tmp_path):
    """sync_every=8 detects the planted spike up to 7 steps late, but the ring covers the lag: the same
    spike, snapshot steps and roles, weights and per-step rows as fetching every step."""
    lag, _ = _run(tmp_path / "lag", sync_every=8)
    now, _ = _run(tmp_path / "now", sync_every=1)
    assert [s.onset for s in lag.spikes] == [s.onset for s in now.spikes] == [70]
    roles = [(s.step, s.role) for s in lag.snapshots if s.role != "context"]
    assert roles == [(s.step, s.role) for s in now.snapshots if s.role != "context"]
    assert (70, "onset") in roles and [t for t, r in roles if r == "pre"] == list(range(65, 70))
    for t in (65, 70):
        a, b = lag.snapshot(t).load(), now.snapshot(t).load()
        assert a.meta["loss"] == b.meta["loss"] and a.meta["optimizer_step"] == b.meta["optimizer_step"]
        for name, p in a.params.items():
            torch.testing.assert_close(p, b.params[name], rtol=0, atol=0)
    for col in ("loss", "probe_loss", "grad_norm", "param_norm", "update_norm", "optimizer_step",
                "adam_ratio_median", "spike_id"):
        assert lag.steps.column(col).to_pylist() == now.steps.column(col).to_pylist(), col


def test_ring_without_lag_cover_would_lose_the_window(tmp_path):
    """Control: the lag is real. With sync_every=8 the onset is committed up to 7 steps after its capture,
    so the ring holds ring_size + 7 slots; the recorder's ring is that large."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model, opt, tmp_path / "r", ring_size=6, sync_every=8, probe=None) as rec:
        assert rec.ring.size == 6 + 7 and rec.sync_every == 8
    with Recorder(model, opt, tmp_path / "s", ring_size=6, probe=None) as rec:
        assert rec.ring.size == 6 and rec.sync_every == 1  # CPU default: nothing to wait for


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (sync debug mode)")
def test_cuda_sync_debug_mode(tmp_path):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    xs = [torch.randn(16, 8, device=dev) for _ in range(40)]
    with Recorder(model, opt, tmp_path / "run", ring_size=4, baseline_every=0, sync_every=8, probe=None,
                  context_every=0) as rec:
        for t, x in enumerate(xs):
            y = x.sum(1, keepdim=True)
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            normal = (t + 1) % 8 != 0 and t > 2
            torch.cuda.set_sync_debug_mode("error" if normal else 0)
            try:
                rec.observe(loss, {"x": x, "y": y})
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
    run = open_run(tmp_path / "run")
    assert len(run.steps) == 40


def test_unclosed_recorder_keeps_the_queued_steps(tmp_path):
    """Steps still waiting for their fetch when a recorder is garbage-collected without close() are written."""
    import gc

    def train_and_forget():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        rec = Recorder(model, opt, tmp_path / "run", sync_every=8, baseline_every=0, probe=None)
        for _ in range(21):  # 16 committed, 5 queued
            x = torch.randn(4, 3)
            opt.zero_grad()
            loss = F.mse_loss(model(x), x[:, :1])
            loss.backward()
            rec.observe(loss, {"x": x, "y": x[:, :1]})
            opt.step()
        assert len(rec._queue) == 5

    train_and_forget()
    gc.collect()
    steps = open_run(tmp_path / "run").steps
    assert steps.column("step").to_pylist() == list(range(21))
    assert all(v == v and v > 0 for v in steps.column("loss").to_pylist())  # fetched, not NaN
    assert all(v is not None for v in steps.column("grad_norm").to_pylist())
