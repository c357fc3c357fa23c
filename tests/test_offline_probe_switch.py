"""A run with no online spike is re-detected offline on steps/ by `analyze`; the offline detector must
be told where the auto probe's set switched (the `probe` event), as the recorder told it online.
Before, the drawn set's loss was compared with the first batch's and the switch was reported as a
spike (not_analyzed: its onset had no snapshot), so `forensics analyze` exited 4 on a quiet run."""

import warnings

import torch
import torch.nn.functional as F

from forensics import Recorder, open_run
from forensics.analyzer.pipeline import analyze
from forensics.record.offline import probe_sets


def _record(path):
    """The first batch is noise-free, the rest carry label noise of std 3: the drawn probe's loss is
    ~x10 the first batch's at the same weights (a switch of sets, not a spike)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x_all = torch.randn(1024, 4, generator=g)
    y_all = x_all[:, :1] + 3.0 * torch.randn(1024, 1, generator=g)
    y_all[:8] = x_all[:8, :1]
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Recorder(model, opt, path, loss="mse", model_factory="forensics.zoo.models:mlp",
                      model_kwargs={"sizes": [4, 16, 1]}, probe_size=64) as rec:
            for t in range(60):
                idx = torch.arange(8) if t == 0 else torch.randint(8, 1024, (8,), generator=g)
                opt.zero_grad()
                loss = F.mse_loss(model(x_all[idx]), y_all[idx])
                loss.backward()
                rec.observe(loss, {"x": x_all[idx], "y": y_all[idx]})
                opt.step()
    return open_run(path)


def test_the_probe_switch_is_no_spike_offline(tmp_path):
    run = _record(tmp_path / "run")
    (event,) = [e for e in run.events if e.get("type") == "probe"]
    probe = run.steps.column("probe_loss").to_pylist()
    assert probe[event["step"] + 1] > 5 * probe[event["step"]]  # the sets differ: the planted jump
    assert run.spikes == []
    assert [s.context.onset for s in analyze(run, write=False, mechanisms=["data"]).spikes] == []


def test_probe_sets_follow_the_recorder():
    events = [{"type": "probe", "step": 3, "active": True}]
    nan = float("nan")
    assert probe_sets(range(6), [None, nan, 1.0, 1.0, 2.0, 2.0], events) == [
        None, None, "first", "first", "drawn", "drawn"]
    assert probe_sets(range(3), [None, 1.0, 1.0], [{"type": "probe", "step": 1, "active": False}]) == [
        None, "first", "off"]
    assert probe_sets(range(3), [1.0, 1.0, 1.0], []) is None
