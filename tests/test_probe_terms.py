"""The auto probe's budget of `probe_terms` loss terms counts a one-hot or soft-label row as one term:
a classifier trained on one-hot targets over 1000 classes keeps a probe of `probe_size` samples, as
with class-index targets. Before, its 1000 "elements" per sample cut the probe to 4 samples, and a
4-sample probe's loss wandered past 2.5x its minimum once the samples were fitted: 11 false spikes in
1500 steps of a run whose weights were exactly those of the index-target run, which reported none."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from forensics import Recorder, open_run
from forensics.record.probe import AutoProbe, load_probe, terms_per_sample

KEYS = {"input": "x", "target": "y"}


@pytest.mark.parametrize("shape, dtype, terms", [
    ((8,), torch.long, 1), ((8, 64), torch.long, 64), ((8, 32, 32), torch.long, 1024),
    ((8, 1000), torch.float32, 1), ((8, 64, 50), torch.float32, 64), ((8, 1), torch.float32, 1)])
def test_terms_per_sample(shape, dtype, terms):
    assert terms_per_sample(torch.zeros(shape, dtype=dtype)) == terms


@pytest.mark.parametrize("classes, onehot, rows", [(1000, True, 256), (1000, False, 256), (50, True, 256)])
def test_one_hot_targets_keep_probe_size(classes, onehot, rows):
    auto = AutoProbe(KEYS, size=256, batches=64, terms=4096)
    decision, s = None, 0
    while decision is None:
        g = torch.Generator().manual_seed(s)
        y = torch.randint(0, classes, (32,), generator=g)
        decision = auto.offer({"x": torch.randn(32, 5, generator=g),
                               "y": F.one_hot(y, classes).float() if onehot else y})
        s += 1
    assert decision[0] == "probe" and decision[1]["x"].shape[0] == rows


def _run(path, onehot, classes=1000, steps=700):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, classes, generator=g)
    x_all = torch.randn(4096, 32, generator=g)
    y_all = (x_all @ w).argmax(1)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Recorder(model, opt, path, loss=F.cross_entropy) as rec:
            for _ in range(steps):
                idx = torch.randint(0, 4096, (32,), generator=g)
                x, y = x_all[idx], y_all[idx]
                y = F.one_hot(y, classes).float() if onehot else y
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                rec.observe(loss, {"x": x, "y": y})
                opt.step()
    return open_run(path)


def test_a_one_hot_classifier_is_as_quiet_as_the_same_run_with_class_indices(tmp_path):
    index, onehot = _run(tmp_path / "index", False), _run(tmp_path / "onehot", True)
    assert [s.onset for s in index.spikes] == [] and [s.onset for s in onehot.spikes] == []
    assert load_probe(tmp_path / "onehot", "cpu")["x"].shape[0] == 256
