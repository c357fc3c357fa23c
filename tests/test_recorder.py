"""Known-answer tests of the recorder: exact snapshot semantics against hand-computed optimizer steps."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from forensics import Recorder, open_run
from forensics.record.recorder import RecorderWarning


def _net(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).to(dtype)


def _batches(n, seed=1, dtype=torch.float64, bs=8):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(bs, 3, generator=g, dtype=dtype)
        out.append((x, x.sum(1, keepdim=True).sin()))
    return out


def _train(model, opt, rec, batches, sched=None, spike_at=(), scale=100.0):
    for t, (x, y) in enumerate(batches):
        if t in spike_at:
            y = y * scale
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        rec.observe(loss, {"x": x, "y": y})
        opt.step()
        if sched is not None:
            sched.step()


def _grad(params, x, y):
    """g = d/dθ mse(f_θ(x), y) for the _net architecture, computed without the recorded model."""
    w1, b1, w2, b2 = [p.detach().clone().requires_grad_(True) for p in params]
    loss = F.mse_loss(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)
    return list(torch.autograd.grad(loss, [w1, b1, w2, b2]))


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_snapshots_match_hand_computed_steps(tmp_path, cls):
    model = _net()
    lr0, betas, eps, wd = 0.05, (0.8, 0.95), 1e-6, 0.1
    opt = getattr(torch.optim, cls)(model.parameters(), lr=lr0, betas=betas, eps=eps, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k))
    init = [p.detach().clone() for p in model.parameters()]
    batches = _batches(5)
    with Recorder(model, opt, tmp_path / "run", baseline_every=1) as rec:  # every step a snapshot
        _train(model, opt, rec, batches, sched)
    run = open_run(tmp_path / "run")
    names = [n for n, _ in model.named_parameters()]

    # Replicate Adam/AdamW by hand (Kingma & Ba 2015; Loshchilov & Hutter 2019 for AdamW).
    theta = init
    m = [torch.zeros_like(p) for p in theta]
    v = [torch.zeros_like(p) for p in theta]
    for t, (x, y) in enumerate(batches):
        snap = run.snapshot(t).load()
        lr = lr0 / (1 + t)
        g = _grad(theta, x, y)
        assert snap.meta["step"] == t and snap.meta["optimizer_step"] == t
        assert snap.meta["lr"] == pytest.approx(lr)
        assert snap.meta["betas"] == list(betas) and snap.meta["eps"] == eps
        assert snap.meta["decoupled_weight_decay"] is (cls == "AdamW")
        assert snap.meta["loss"] == pytest.approx(float(F.mse_loss(
            torch.tanh(x @ theta[0].T + theta[1]) @ theta[2].T + theta[3], y)))
        for i, n in enumerate(names):
            torch.testing.assert_close(snap.params[n], theta[i], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(snap.grads[n], g[i], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(snap.exp_avg[n], m[i], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(snap.exp_avg_sq[n], v[i], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(snap.batch["x"], x)
        k = t + 1  # bias correction uses optimizer_step + 1
        new = []
        for i in range(len(theta)):
            gi, p = g[i], theta[i]
            if cls == "AdamW":
                p = p * (1 - lr * wd)
            else:
                gi = gi + wd * p
            m[i] = betas[0] * m[i] + (1 - betas[0]) * gi
            v[i] = betas[1] * v[i] + (1 - betas[1]) * gi * gi
            mhat, vhat = m[i] / (1 - betas[0] ** k), v[i] / (1 - betas[1] ** k)
            new.append(p - lr * mhat / (vhat.sqrt() + eps))
        theta = new
    for i, p in enumerate(model.parameters()):
        torch.testing.assert_close(p.detach(), theta[i], rtol=1e-10, atol=1e-12)
    # update_norm column = ||θ_{t+1} - θ_t|| from consecutive snapshots
    steps = run.steps.to_pylist()
    for t in range(4):
        a, b = run.snapshot(t).load().params, run.snapshot(t + 1).load().params
        want = math.sqrt(sum(float((b[n] - a[n]).pow(2).sum()) for n in names))
        assert steps[t]["update_norm"] == pytest.approx(want, rel=1e-5)
    assert [r["optimizer_step"] for r in steps] == list(range(5))
    assert steps[0]["adam_ratio_median"] is None and steps[1]["adam_ratio_median"] > 0


def test_sgd_momentum_snapshots_match_hand_computed_steps(tmp_path):
    model = _net()
    lr, mu, damp = 0.1, 0.9, 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mu, dampening=damp)
    theta = [p.detach().clone() for p in model.parameters()]
    batches = _batches(4)
    with Recorder(model, opt, tmp_path / "run", baseline_every=1) as rec:
        _train(model, opt, rec, batches)
    run = open_run(tmp_path / "run")
    names = [n for n, _ in model.named_parameters()]
    buf = None
    for t, (x, y) in enumerate(batches):
        snap = run.snapshot(t).load()
        assert snap.meta["momentum"] == mu and snap.meta["dampening"] == damp
        g = _grad(theta, x, y)
        for i, n in enumerate(names):
            torch.testing.assert_close(snap.params[n], theta[i], rtol=1e-12, atol=1e-12)
            want = torch.zeros_like(theta[i]) if buf is None else buf[i]
            torch.testing.assert_close(snap.state["momentum_buffer"][n], want, rtol=1e-10, atol=1e-12)
        # PyTorch: the first step sets buf = g (no dampening), later buf = μ buf + (1 - dampening) g.
        buf = list(g) if buf is None else [mu * b + (1 - damp) * gi for b, gi in zip(buf, g)]
        theta = [p - lr * b for p, b in zip(theta, buf)]


def test_planted_spike_pre_window_onset_post_and_baselines(tmp_path):
    model = _net(dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    K, tail, onset = 8, 5, 100
    with Recorder(model, opt, tmp_path / "run", ring_size=K, tail=tail, baseline_every=50, steps_chunk=32) as rec:
        _train(model, opt, rec, _batches(160, dtype=torch.float32), spike_at={onset}, scale=1000.0)
        assert [s.onset for s in rec.spikes] == [onset]
    run = open_run(tmp_path / "run")
    assert [(s.onset, s.end) for s in run.spikes] == [(onset, onset + 1)]
    roles = {s.step: s.role for s in run.snapshots}
    assert [s for s, r in roles.items() if r == "pre"] == list(range(onset - K + 1, onset))
    assert roles[onset] == "onset"
    assert [s for s, r in roles.items() if r == "post"] == list(range(onset + 1, onset + 1 + tail))
    assert [s for s, r in roles.items() if r == "baseline"] == [0, 50, 150]
    assert all(s.spike_id == 0 for s in run.snapshots if s.role != "baseline")
    table = run.steps
    assert table.column("step").to_pylist() == list(range(160))
    ids = table.column("spike_id").to_pylist()
    assert ids[onset] == 0 and ids[onset - 1] is None and ids[onset + 1] is None
    snap = run.snapshot(onset).load()
    assert snap.meta["role"] == "onset" and snap.meta["spike_id"] == 0
    assert float(snap.batch["y"].abs().max()) > 100  # the poisoned batch itself


def test_clean_control_has_no_spike(tmp_path):
    model = _net(dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with Recorder(model, opt, tmp_path / "run", baseline_every=100) as rec:
        _train(model, opt, rec, _batches(300, dtype=torch.float32, bs=2))
    run = open_run(tmp_path / "run")
    assert run.spikes == []
    assert [s.role for s in run.snapshots] == ["baseline"] * 3


def test_stride_still_captures_the_onset(tmp_path):
    model = _net(dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with Recorder(model, opt, tmp_path / "run", stride=4, ring_size=4, tail=0, baseline_every=0) as rec:
        _train(model, opt, rec, _batches(80, dtype=torch.float32), spike_at={61}, scale=1000.0)
    run = open_run(tmp_path / "run")
    (spike,) = run.spikes
    assert spike.onset == 61
    want = [(60, "pre"), (61, "onset")] + [(t, "during") for t in range(62, spike.end or 80)]
    assert [(s.step, s.role) for s in run.snapshots if s.role != "context"] == want  # every step despite stride
    # sparse context before the dense ring: every 16th step of the last 128
    assert [s.step for s in run.snapshots if s.role == "context"] == [0, 16, 32, 48]
    upd = run.steps.column("update_norm").to_pylist()
    # every step is captured (its loss is fetched after the capture), so every update norm is known
    assert upd[60] is not None and upd[59] is not None


def test_tied_weights_save_and_are_listed(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(5, 3)
            self.out = torch.nn.Linear(3, 5, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, i):
            return self.out(self.emb(i))

    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with Recorder(model, opt, tmp_path / "run", batch_keys=("0", "1"), baseline_every=1, loss="cross_entropy") as rec:
        for _ in range(3):
            i = torch.randint(0, 5, (4,))
            opt.zero_grad()
            loss = F.cross_entropy(model(i), i)
            loss.backward()
            rec.observe(loss, (i, i))
            opt.step()
    run = open_run(tmp_path / "run")
    assert run.manifest["tied"] == {"out.weight": "emb.weight"}
    assert [p["name"] for p in run.manifest["params"]] == ["emb.weight"]
    snap = run.snapshot(2).load()
    assert set(snap.params) == {"emb.weight"} and set(snap.batch) == {"0", "1"}
    assert snap.meta["batch_keys"] == ["0", "1"]


def test_probe_loss_is_logged_and_does_not_touch_training(tmp_path):
    batches = _batches(30, dtype=torch.float32)
    probe = {"x": torch.randn(16, 3), "y": torch.randn(16, 1)}
    finals = []
    for with_probe in (False, True):
        model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.0), torch.nn.Linear(8, 1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        kw = {"probe": probe, "probe_every": 5} if with_probe else {}
        with Recorder(model, opt, tmp_path / f"run{with_probe}", **kw) as rec:
            _train(model, opt, rec, batches)
        assert model.training
        finals.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    col = open_run(tmp_path / "runTrue").steps.column("probe_loss").to_pylist()
    assert [i for i, v in enumerate(col) if v is not None] == list(range(0, 30, 5))


def test_unknown_optimizer_records_its_state_with_one_warning(tmp_path):
    model = _net(dtype=torch.float32)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    with pytest.warns(RecorderWarning, match="Adagrad") as rec_warnings:
        with Recorder(model, opt, tmp_path / "run", baseline_every=2) as rec:
            _train(model, opt, rec, _batches(5, dtype=torch.float32))
    assert len([w for w in rec_warnings if issubclass(w.category, RecorderWarning)]) == 1
    snap = open_run(tmp_path / "run").snapshot(4).load()
    assert set(snap.state["sum"]) == set(snap.params)
    assert any(e["type"] == "warning" for e in open_run(tmp_path / "run").events)


def test_manifest_contents_and_existing_dir(tmp_path):
    model = _net(dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rec = Recorder(model, opt, tmp_path / "run", model_factory="forensics.zoo.models:mlp",
                   model_kwargs={"sizes": [3, 4, 1]}, task={"grid": "uniform-1d"}, seed=7)
    rec.close()
    man = open_run(tmp_path / "run").manifest
    assert man["format_version"] == 1 and man["run_id"] == "run" and man["seed"] == 7
    assert man["model"] == {"factory": "forensics.zoo.models:mlp", "kwargs": {"sizes": [3, 4, 1]}}
    assert man["optimizer"]["class"] == "torch.optim.adam.Adam"
    assert man["optimizer"]["param_groups"][0]["params"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert man["batch_keys"] == {"input": "x", "target": "y"} and man["detector"]["preset"] == "robust"
    with pytest.raises(ValueError, match="overwrite"):
        Recorder(model, opt, tmp_path / "run")
    Recorder(model, opt, tmp_path / "run", overwrite=True).close()
    with pytest.raises(ValueError, match="ring_size"):
        Recorder(model, opt, tmp_path / "other", ring_size=0)


def test_no_heavy_imports_on_the_hot_path():
    import subprocess
    import sys

    code = ("import sys, torch; from forensics import Recorder; m=torch.nn.Linear(2,1); "
            "o=torch.optim.Adam(m.parameters()); import tempfile; d=tempfile.mkdtemp(); "
            "r=Recorder(m,o,d+'/r'); l=m(torch.ones(1,2)).sum(); l.backward(); r.observe(l,{}); o.step(); "
            "bad=[k for k in ('duckdb','pandas','streamlit') if k in sys.modules]; print(bad); r.close()")
    import os

    import forensics

    root = os.path.dirname(os.path.dirname(os.path.abspath(forensics.__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.strip() == "[]", out.stderr
