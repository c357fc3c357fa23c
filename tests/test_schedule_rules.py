"""Everyday causes read from the records: an lr that jumps, an optimizer state that is reset.

Planted in recorded runs (a ×8 lr at step 300 under full-batch GD; Adam's state cleared at step 300
with the weights kept, full batch), with controls: the same runs without the change, and a deliberate ×2.6
raise that the catapult sample explains (its verdict stays catapult, tests/test_analyze.py)."""

import pytest
import torch

from forensics import Recorder, analyze


def _run(root, *, opt="sgd", lr_jump_at=None, reset_at=None, steps=420):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 1, generator=g)
    x_all = torch.randn(512, 8, generator=g)
    y_all = torch.sin(x_all @ w)
    net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    optim = (torch.optim.SGD(net.parameters(), lr=0.05) if opt == "sgd"
             else torch.optim.Adam(net.parameters(), lr=1e-2))
    rec = Recorder(net, optim, root, loss="mse")
    for step in range(steps):
        if step == lr_jump_at:
            for group in optim.param_groups:
                group["lr"] *= 8
        if step == reset_at:
            optim.state.clear()  # weights kept, Adam's moments and step counter gone
        idx = slice(None)  # full batch: the planted change is the only thing that moves
        optim.zero_grad()
        loss = ((net(x_all[idx]) - y_all[idx]) ** 2).mean()
        loss.backward()
        rec.observe(loss, {"x": x_all[idx], "y": y_all[idx]})
        optim.step()
    rec.close()
    return net


@pytest.mark.parametrize("kind", ["lr_jump", "optimizer_reset"])
def test_planted_schedule_causes_are_the_verdict(tmp_path, kind):
    kw = {"lr_jump_at": 300} if kind == "lr_jump" else {"opt": "adam", "reset_at": 300}
    net = _run(tmp_path / kind, **kw)
    result = analyze(tmp_path / kind, model=net, write=False)
    near = [s for s in result.spikes if 300 <= s.context.onset <= 330]
    assert near, [s.context.onset for s in result.spikes]
    spike = near[0]
    assert spike.verdict == kind, spike.verdict_message
    if kind == "lr_jump":
        assert "jumped ×8 at step 300" in spike.verdict_message
    else:
        assert "reset at step 300" in spike.verdict_message and "→ 1" in spike.verdict_message
    others = [s for s in result.spikes if not 300 <= s.context.onset <= 364]
    assert not [s.context.onset for s in others if s.verdict == kind]


def test_control_no_change_no_schedule_verdict(tmp_path):
    net = _run(tmp_path / "plain", opt="adam")
    result = analyze(tmp_path / "plain", model=net, mechanisms=["lr_jump", "optimizer_reset"],
                     write=False)
    assert not [s.verdict for s in result.spikes if s.verdict in ("lr_jump", "optimizer_reset")]
