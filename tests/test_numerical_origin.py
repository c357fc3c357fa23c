"""`numerical` names where a NaN started, not where the loss noticed it: a branch's weight is set to
NaN at step 300 while the branch is unused; the loss goes NaN only at 340, when the branch joins the
output. The first captured snapshot holding the NaN is the context snapshot of step 304 (every 16
steps), 36 steps before onset (before: only 32 steps back and the selected window were looked at,
and a later snapshot was named). The run without the NaN has no spike to judge."""

import pytest
import torch
import torch.nn.functional as F

from forensics import Recorder
from forensics.analyzer.pipeline import analyze


class TwoBranch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
        self.use_b = False

    def forward(self, x):
        return self.a(x) + (self.b(x) if self.use_b else 0.0)


def _record(path, poison: bool):
    torch.manual_seed(0)
    model = TwoBranch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    with Recorder(model, opt, path, loss="mse", probe=None) as rec:
        for t in range(360):
            if poison and t == 300:
                with torch.no_grad():
                    model.b.weight[0, 0] = float("nan")
            model.use_b = t >= 340
            x = torch.randn(16, 4, generator=g)
            y = x.sum(1, keepdim=True)
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            rec.observe(loss, {"x": x, "y": y})
            opt.step()
    return path


def test_the_first_captured_nan_is_named_not_the_first_nan_loss(tmp_path):
    analysis = analyze(_record(tmp_path / "run", True), write=False, mechanisms=["numerical"])
    (spike,) = [s for s in analysis.spikes if s.context.onset == 340]
    firsts = {(step, metric) for step, _, metric, _ in spike.evidence.rows if metric.startswith("first_nonfinite@")}
    assert firsts == {(304, "first_nonfinite@param:b.weight")}, firsts
    assert spike.verdict == "numerical"


def test_a_finite_run_has_nothing_to_trace(tmp_path):
    analysis = analyze(_record(tmp_path / "run", False), write=False, mechanisms=["numerical"])
    assert not [s for s in analysis.spikes if s.verdict == "numerical"]
