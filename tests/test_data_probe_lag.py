"""A bad batch the training loss cannot flag (step 5: no 16-value loss window yet) moves the weights;
the probe sees it one step later and opens the spike at step 6. The data rule judges the batch of the
step before a probe-opened onset too, at that step's weights: the verdict is `data`, naming batch 5
(before: batch 6, an ordinary one, was judged and the verdict was `sharpness`). The same plant at step
40 is opened by the loss itself and judged at its own step; the unplanted run gets no data verdict."""

import pytest
import torch
import torch.nn.functional as F

from forensics import Recorder
from forensics.analyzer.pipeline import analyze


def _record(path, plant_at):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(512, 8, generator=g)
    Y = X[:, :1] * X[:, 1:2]
    with Recorder(model, opt, path, loss="mse", model_factory="forensics.zoo.models:mlp",
                  model_kwargs={"sizes": [8, 32, 1]}) as rec:
        for t in range(60):
            idx = torch.randint(0, 512, (16,), generator=g)
            x, y = X[idx], Y[idx] * (30.0 if t == plant_at else 1.0)
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            rec.observe(loss, {"x": x, "y": y})
            opt.step()
    return analyze(path, write=False, mechanisms=["data", "sharpness", "catapult"])


@pytest.mark.parametrize("plant_at, onset, signal", [(5, 6, "probe"), (40, 40, "loss")])
def test_the_planted_batch_is_judged_whichever_series_opened_the_spike(tmp_path, plant_at, onset, signal):
    analysis = _record(tmp_path / "run", plant_at)
    (spike,) = [s for s in analysis.spikes if abs(s.context.onset - onset) <= 1]
    assert spike.context.onset == onset and spike.context.signal == signal
    data = next(f for f in spike.findings if f.rule == "data")
    assert spike.verdict == "data", data.message
    assert data.evidence["suspect_step"] == plant_at and f"batch {plant_at} has loss" in data.message
    assert data.evidence["ratio"] > 100  # targets x30: loss about x900 at the same weights


def test_without_the_plant_no_batch_is_called_bad(tmp_path):
    analysis = _record(tmp_path / "run", None)
    assert not [s.context.onset for s in analysis.spikes if s.verdict == "data"]


def test_the_default_counterfactual_skips_the_batch_the_verdict_names(tmp_path):
    """The verdict names batch 5 (the step before the probe-opened onset 6): the hint points at that
    snapshot and whatif's default change skips batch 5, which removes the spike (skipping the
    ordinary onset batch 6 did not, and read as 'the fix does not work')."""
    import forensics
    from forensics.rundir.reader import open_run
    from forensics.whatif.defaults import default_changes

    _record(tmp_path / "run", 5)
    analyze(tmp_path / "run", mechanisms=["data", "sharpness", "catapult"])
    run = open_run(tmp_path / "run")
    spike = next(s for s in run.spikes if s.onset == 6)
    data = next(f for f in analyze(tmp_path / "run", write=False, mechanisms=["data"]).spikes[0].findings)
    assert "snapshot of step 5" in data.hint, data.hint
    changes, rules = default_changes(run, spike)
    assert changes[rules.index("data")] == "skip_batch=5", changes
    result = forensics.whatif(tmp_path / "run", spike.spike_id, ["skip_batch=5"])
    assert result.reproduced and result.changes[0].spike_gone, result.changes[0]
