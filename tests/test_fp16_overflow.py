"""float16 overflow under CPU autocast with a GradScaler that is NOT passed to the Recorder (found
automatically): every loop step is recorded, the scaler's calibration skips are not taken for the
origin, and `numerical` names the first module whose float16 output overflowed, at the loop's step.

Planted: a batch whose inputs are ×1e6 at step K (the first layer overflows), or the output layer's
bias set to 7e4 at step K (the output layer overflows). The expected module and step come from hooks
on the float16 forward pass in the training loop itself, not from the analyzer."""

import math

import pytest
import torch
import torch.nn.functional as F

from forensics import analyze
from forensics import Recorder
from forensics.rundir.reader import open_run

K = 140


def _run(root, kind):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 1, generator=g)
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")  # initial scale 2**16: the first steps overflow and calibrate it
    truth = {"first": None, "module": None, "skips_before_first_ok": 0}
    overflowed = []
    def note(name):
        return lambda m, a, out: overflowed.append(name) if not torch.isfinite(out).all() else None

    hooks = [m.register_forward_hook(note(n)) for n, m in net.named_children()]
    rec = Recorder(net, opt, root, loss="mse")
    ok_seen = False
    for t in range(K + 30):
        x = torch.randn(16, 6, generator=g)
        y = 300 * torch.tanh(x @ w)  # large targets: the scaled gradients overflow at 2**16
        if kind == "input" and t == K:
            x = x * 1e6
        if kind == "bias" and t == K:
            with torch.no_grad():
                net[2].bias.fill_(7e4)
        opt.zero_grad()
        overflowed.clear()
        with torch.autocast("cpu", dtype=torch.float16):
            out = net(x)
        loss = F.mse_loss(out.float(), y)
        if overflowed and truth["first"] is None:
            truth["first"], truth["module"] = t, overflowed[0]
        scaler.scale(loss).backward()
        rec.observe(loss, {"x": x, "y": y})
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped = scaler.get_scale() < scale
        ok_seen = ok_seen or not skipped
        truth["skips_before_first_ok"] += int(skipped and not ok_seen)
    rec.close()
    for h in hooks:
        h.remove()
    return net, truth


@pytest.mark.parametrize("kind, module", [("input", "0"), ("bias", "2")])
def test_float16_overflow_is_named_with_module_step_and_scale(tmp_path, kind, module):
    net, truth = _run(tmp_path / kind, kind)
    assert truth["first"] == K and truth["module"] == module  # the plant did what it says
    assert truth["skips_before_first_ok"] >= 3  # the scaler calibrated first (not an origin)
    rows = open_run(tmp_path / kind).steps.to_pylist()
    assert [r["step"] for r in rows] == list(range(K + 30))  # every loop step, skipped ones too
    calibration = truth["skips_before_first_ok"]
    assert sum(bool(r["amp_skipped"]) for r in rows[:calibration]) == calibration
    result = analyze(tmp_path / kind, model=net, mechanisms=["numerical"], write=False)
    spike = next(s for s in result.spikes if s.context.onset <= K <= (s.context.end or math.inf))
    assert spike.verdict == "numerical", spike.verdict_message
    f = next(x for x in spike.findings if x.rule == "numerical")
    fp16 = f.evidence["fp16_overflow"]
    assert (fp16["module"], fp16["step"]) == (module, K), f.message
    assert fp16["value"] > 65504 and fp16["output_layer"] == (module == "2")
    assert fp16["loss_scale"] == rows[K]["loss_scale"]
    assert fp16["scale_at_floor"] == (rows[K]["loss_scale"] <= 1)
    assert f.evidence["first_step"] == K  # not a calibration skip at the run's start
    assert f"{truth['skips_before_first_ok']} calibration skip" in f.message
    assert f"float16 overflow in the activations of module `{module}`" in f.message
    assert "bfloat16" in f.hint


def test_without_float16_no_overflow_is_claimed(tmp_path):
    """Control: the same non-finite loss in float32 (no scaler, float32 weights) names no module."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    with Recorder(net, opt, tmp_path / "run", loss="mse") as rec:
        for t in range(K + 10):
            x = torch.randn(16, 6, generator=g) * (1e30 if t == K else 1.0)
            opt.zero_grad()
            loss = F.mse_loss(net(x), x[:, :1])
            loss.backward()
            rec.observe(loss, {"x": x, "y": x[:, :1]})
            opt.step()
    result = analyze(tmp_path / "run", model=net, mechanisms=["numerical"], write=False)
    found = [f for s in result.spikes for f in s.findings if f.rule == "numerical" and f.fired]
    assert found and all("fp16_overflow" not in f.evidence for f in found)
