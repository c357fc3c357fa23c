"""Inputs a user gets wrong: observe() after optimizer.step(), batches that are not a flat dict of
tensors, and a torch.compile'd model. Known answers come from optimizer steps computed by hand."""

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from forensics import Recorder, open_run
from forensics.record.recorder import RecorderWarning


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(8, 3, generator=g, dtype=torch.float64)
        out.append((x, x.sum(1, keepdim=True).sin()))
    return out


def _f(theta, x):
    w1, b1, w2, b2 = theta
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def _loss_and_grad(theta, x, y):
    """mse(f_θ(x), y) and its gradient, computed without the recorded model."""
    leaves = [p.detach().clone().requires_grad_(True) for p in theta]
    loss = F.mse_loss(_f(leaves, x), y)
    return float(loss.detach()), list(torch.autograd.grad(loss, leaves))


def _train(model, opt, sched, rec, batches, order, skip=()):
    """One loop, the observe() call before optimizer.step() or after it (as a framework's
    batch-end hook: after step(), the scheduler step and zero_grad)."""
    for t, (x, y) in enumerate(batches):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if order == "before" and t not in skip:
            rec.observe(loss, {"x": x, "y": y})
        opt.step()
        sched.step()
        if order == "after":
            opt.zero_grad(set_to_none=True)
            if t not in skip:
                rec.observe(loss, {"x": x, "y": y})


def _hand_steps(kind, theta, batches, lr0, mu=0.9, betas=(0.8, 0.95), eps=1e-8):
    """Per step t: (θ_t, loss_t, g_t, state before update t), replicating torch's SGD-momentum / Adam."""
    out, buf = [], None
    m = [torch.zeros_like(p) for p in theta]
    v = [torch.zeros_like(p) for p in theta]
    for t, (x, y) in enumerate(batches):
        lr = lr0 / (1 + t)
        loss, g = _loss_and_grad(theta, x, y)
        if kind == "SGD":
            state = {"momentum_buffer": [torch.zeros_like(p) for p in theta] if buf is None else buf}
            buf = list(g) if buf is None else [mu * b + gi for b, gi in zip(buf, g)]
            new = [p - lr * b for p, b in zip(theta, buf)]
        else:
            state = {"exp_avg": m, "exp_avg_sq": v}
            k = t + 1
            m = [betas[0] * a + (1 - betas[0]) * gi for a, gi in zip(m, g)]
            v = [betas[1] * a + (1 - betas[1]) * gi * gi for a, gi in zip(v, g)]
            new = [p - lr * (a / (1 - betas[0] ** k)) / ((b / (1 - betas[1] ** k)).sqrt() + eps)
                   for p, a, b in zip(theta, m, v)]
        out.append((theta, loss, g, state, lr))
        theta = new
    return out


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
@pytest.mark.parametrize("order", ["before", "after"])
def test_loss_and_batch_attach_to_their_step_in_either_order(tmp_path, order, kind):
    model, lr0 = _net(), 0.05
    opt = (torch.optim.SGD(model.parameters(), lr=lr0, momentum=0.9) if kind == "SGD"
           else torch.optim.Adam(model.parameters(), lr=lr0, betas=(0.8, 0.95), eps=1e-8))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k))
    theta0 = [p.detach().clone() for p in model.parameters()]
    batches = _batches(6)
    with warnings.catch_warnings(), Recorder(model, opt, tmp_path / "run", baseline_every=1) as rec:
        warnings.simplefilter("error", RecorderWarning)  # a supported order warns about nothing
        _train(model, opt, sched, rec, batches, order)
    run = open_run(tmp_path / "run")
    names = [n for n, _ in model.named_parameters()]
    hand = _hand_steps(kind, theta0, batches, lr0)
    assert run.steps.column("loss").to_pylist() == pytest.approx([h[1] for h in hand], rel=1e-12)
    for t, ((x, y), (theta, loss, g, state, lr)) in enumerate(zip(batches, hand)):
        snap = run.snapshot(t).load()
        assert snap.meta["step"] == t and snap.meta["lr"] == pytest.approx(lr)
        assert snap.meta["loss"] == pytest.approx(loss, rel=1e-12)  # loss of batch t at the weights before update t
        torch.testing.assert_close(snap.batch["x"], x, rtol=0, atol=0)
        torch.testing.assert_close(snap.batch["y"], y, rtol=0, atol=0)
        for i, n in enumerate(names):
            torch.testing.assert_close(snap.params[n], theta[i], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(snap.grads[n], g[i], rtol=1e-10, atol=1e-12)
            for key, tensors in state.items():
                torch.testing.assert_close(snap.state[key][n], tensors[i], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order", ["before", "after"])
def test_a_step_without_observe_never_shifts_the_others(tmp_path, order):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
    batches = _batches(5)
    with pytest.warns(RecorderWarning, match="without rec.observe") as record, \
            Recorder(model, opt, tmp_path / "run", baseline_every=1) as rec:
        _train(model, opt, sched, rec, batches, order, skip={2})
    assert len([w for w in record if issubclass(w.category, RecorderWarning)]) == 1
    run = open_run(tmp_path / "run")
    losses = run.steps.column("loss").to_pylist()
    assert math.isnan(losses[2]) and not any(math.isnan(v) for i, v in enumerate(losses) if i != 2)
    for t in (0, 1, 3, 4):
        snap = run.snapshot(t).load()
        torch.testing.assert_close(snap.batch["x"], batches[t][0], rtol=0, atol=0)
        assert snap.meta["loss"] == losses[t]
    assert run.snapshot(2).load().batch == {}
    # the loss of step 3 is the loss of batch 3 at the weights before update 3
    snap = run.snapshot(3).load()
    theta = [snap.params[n] for n, _ in model.named_parameters()]
    assert losses[3] == pytest.approx(_loss_and_grad(theta, *batches[3])[0], rel=1e-12)


def _record_one(tmp_path, name, batch, steps=2):
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with Recorder(model, opt, tmp_path / name, baseline_every=1) as rec:
        for _ in range(steps):
            opt.zero_grad()
            loss = model(torch.ones(2, 3)).pow(2).mean()
            loss.backward()
            rec.observe(loss, batch)
            opt.step()
    return open_run(tmp_path / name).snapshot(steps - 1).load()


def test_nested_list_and_numpy_batches_round_trip(tmp_path):
    np = pytest.importorskip("numpy")
    x = np.arange(6.0).reshape(2, 3)
    nested = {"x": x, "y": torch.tensor([[1.0], [2.0]]), "meta": {"w": torch.ones(2), "pair": (torch.zeros(1), np.int64(3))},
              "n": 4, "ids": [1, 2, 3]}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecorderWarning)  # everything here can be stored: no warning
        snap = _record_one(tmp_path, "nested", nested)
    assert sorted(snap.batch) == ["ids", "meta.pair.0", "meta.pair.1", "meta.w", "n", "x", "y"]
    torch.testing.assert_close(snap.batch["x"], torch.from_numpy(x))
    torch.testing.assert_close(snap.batch["meta.w"], torch.ones(2))
    assert snap.batch["meta.pair.1"].item() == 3 and snap.batch["n"].item() == 4
    assert snap.batch["ids"].tolist() == [1, 2, 3]
    assert sorted(snap.meta["batch_keys"]) == sorted(snap.batch)

    samples = [{"x": torch.full((3,), float(i)), "y": torch.tensor([float(i)])} for i in range(2)]
    snap = _record_one(tmp_path, "list", samples)
    assert sorted(snap.batch) == ["0.x", "0.y", "1.x", "1.y"]
    torch.testing.assert_close(snap.batch["1.x"], torch.full((3,), 1.0))

    snap = _record_one(tmp_path, "array", np.ones((2, 3), dtype=np.float32))
    torch.testing.assert_close(snap.batch["0"], torch.ones(2, 3))


def test_what_cannot_be_stored_is_named_in_one_warning(tmp_path):
    batch = {"x": torch.ones(2, 3), "text": ["a", "b"], "obj": object(), "mask": None}
    with pytest.warns(RecorderWarning) as record:
        snap = _record_one(tmp_path, "run", batch, steps=4)
    msgs = [str(w.message) for w in record if issubclass(w.category, RecorderWarning)]
    assert len(msgs) == 1 and "'text'" in msgs[0] and "'obj'" in msgs[0] and "mask" not in msgs[0], msgs
    assert sorted(snap.batch) == ["x"]


def test_compiled_model_is_recorded_under_its_own_parameter_names(tmp_path):
    from forensics.zoo.models import mlp

    torch.manual_seed(0)
    model = mlp([3, 8, 1])
    compiled = torch.compile(model, backend="eager")  # a real OptimizedModule; no C++ toolchain needed
    assert next(iter(compiled.named_parameters()))[0].startswith("_orig_mod.")
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    with Recorder(compiled, opt, tmp_path / "run", model_factory="forensics.zoo.models:mlp",
                  model_kwargs={"sizes": [3, 8, 1]}, baseline_every=1) as rec:
        for _ in range(3):
            x = torch.randn(4, 3)
            opt.zero_grad()
            loss = F.mse_loss(compiled(x), x[:, :1])
            loss.backward()
            rec.observe(loss, {"x": x, "y": x[:, :1]})
            opt.step()
    run = open_run(tmp_path / "run")
    rebuilt = mlp([3, 8, 1])
    assert [p["name"] for p in run.manifest["params"]] == [n for n, _ in rebuilt.named_parameters()]
    assert run.manifest["optimizer"]["param_groups"][0]["params"] == [n for n, _ in rebuilt.named_parameters()]
    snap = run.snapshot(2).load()
    rebuilt.load_state_dict(snap.params, strict=True)  # what every engine does first
    with torch.no_grad():
        replayed = F.mse_loss(rebuilt(snap.batch["x"]), snap.batch["y"])
    assert float(replayed) == pytest.approx(snap.meta["loss"], rel=1e-6)


def test_hf_callback_unwraps_a_compiled_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from forensics.integrations.huggingface import SpikeForensicsTrainerCallback

    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16, bos_token_id=0,
                                  eos_token_id=0)
    model = torch.compile(transformers.GPT2LMHeadModel(cfg), backend="eager")
    cb = SpikeForensicsTrainerCallback(tmp_path / "run")
    state = transformers.TrainerState(is_world_process_zero=True)
    cb.on_train_begin(None, state, None, model=model, optimizer=torch.optim.Adam(model.parameters()))
    try:
        man = json.loads((tmp_path / "run" / "run.json").read_text())
        assert man["model"]["kwargs"]["architecture"] == "GPT2LMHeadModel"
        assert not any(p["name"].startswith("_orig_mod") for p in man["params"])
        assert man["loss"].endswith("causal_lm_loss")
    finally:
        cb._close()


def test_spike_found_with_observe_after_step_keeps_its_window(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    onset, K = 100, 8
    with Recorder(model, opt, tmp_path / "run", ring_size=K, tail=3, stride=4, baseline_every=0) as rec:
        for t in range(140):
            x = torch.randn(8, 3, generator=g)
            y = x.sum(1, keepdim=True).sin() * (1000.0 if t == onset else 1.0)
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            rec.observe(loss, {"x": x, "y": y})  # a batch-end hook: after the step
    run = open_run(tmp_path / "run")
    assert [s.onset for s in run.spikes] == [onset]
    roles = {s.step: s.role for s in run.snapshots}
    # the onset is only known after step(), so every step was captured despite stride=4
    assert [s for s, r in roles.items() if r == "pre"] == list(range(onset - K + 1, onset))
    assert roles[onset] == "onset"
    snap = run.snapshot(onset).load()
    assert float(snap.batch["y"].abs().max()) > 100  # the poisoned batch itself, not its neighbour
    losses = run.steps.column("loss").to_pylist()
    assert snap.meta["loss"] == losses[onset] > 100 * losses[onset - 1]
    assert run.steps.column("spike_id").to_pylist()[onset] == 0
