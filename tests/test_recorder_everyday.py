"""What the recorder writes for the everyday causes (issue #16): per-step batch rows and every param
group's hyperparameters in steps/, the optimizer's own step count after its state was cleared, every
loop step under a GradScaler (skipped ones marked, with the loss scale), micro-batches of a step."""

import json
import math

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
