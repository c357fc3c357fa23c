"""The auto probe's full-batch decision when the first batch alone fills the probe set
(`probe_size` samples or more): full-batch training must still switch the probe off at the second
batch, and minibatch training must still get a probe of `probe_size` samples."""

import json

import torch

from forensics import Recorder
from forensics.record.probe import AutoProbe

KEYS = {"input": "x", "target": "y"}


def _batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 3, generator=g), "y": torch.randn(n, 1, generator=g)}


def test_a_big_first_batch_waits_for_the_second_to_decide():
    full = _batch(300, 0)
    auto = AutoProbe(KEYS, size=256, batches=64)
    assert auto.offer(full) is None  # one batch cannot tell full-batch from minibatch training
    what, why = auto.offer(full)
    assert what == "off" and "full-batch" in why
    mini = AutoProbe(KEYS, size=256, batches=64)
    assert mini.offer(_batch(300, 1)) is None
    what, probe = mini.offer(_batch(300, 2))
    assert what == "probe" and probe["x"].shape == (256, 3)
    assert torch.equal(probe["x"], _batch(300, 1)["x"][:256])


def test_full_batch_run_of_300_samples_watches_its_loss_not_a_probe(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = _batch(300, 0)
    with Recorder(model, opt, tmp_path / "run", loss="mse") as rec:
        for _ in range(4):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(data["x"]), data["y"])
            loss.backward()
            rec.observe(loss, data)
            opt.step()
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    (probe,) = [e for e in events if e["type"] == "probe"]
    assert probe["step"] == 1 and probe["active"] is False, probe
    assert not (tmp_path / "run" / "probe.safetensors").exists()
