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


def test_probe_size_is_bounded_in_target_elements():
    """Sequences of 64 tokens: 4096 // 64 = 64 sequences (not 256: a forward over 16x a batch of 16
    every step); one target element per sample keeps probe_size; at least one sample is kept."""
    def tokens(n, t, seed):
        g = torch.Generator().manual_seed(seed)
        return {"x": torch.randint(0, 50, (n, t), generator=g), "y": torch.randint(0, 50, (n, t), generator=g)}

    for t, rows in ((64, 64), (16, 256), (8192, 1)):
        auto = AutoProbe(KEYS, size=256, batches=64, terms=4096)
        decision, s = None, 0
        while decision is None:
            decision = auto.offer(tokens(16, t, s))
            s += 1
        assert decision[0] == "probe" and decision[1]["x"].shape == (rows, t), t
    auto = AutoProbe(KEYS, size=256, batches=64, terms=4096)
    decision, s = None, 0
    while decision is None:
        decision = auto.offer(_batch(32, s))
        s += 1
    assert decision[1]["x"].shape == (256, 3)


def test_recorder_draws_a_token_bounded_probe_for_a_small_gpt(tmp_path):
    from forensics.record.probe import load_probe
    from forensics.zoo.gpt import gpt, next_token_loss

    torch.manual_seed(0)
    model = gpt(vocab=32, context=64, d_model=16, layers=1, heads=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    with Recorder(model, opt, tmp_path / "run", loss=next_token_loss) as rec:
        for _ in range(20):
            seq = torch.randint(0, 32, (16, 65), generator=g)
            opt.zero_grad()
            loss = next_token_loss(model(seq[:, :-1]), seq[:, 1:])
            loss.backward()
            rec.observe(loss, {"x": seq[:, :-1], "y": seq[:, 1:]})
            opt.step()
    probe = load_probe(tmp_path / "run", "cpu")
    assert probe["x"].shape == (64, 64)
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["recorder"]["probe_terms"] == 4096
