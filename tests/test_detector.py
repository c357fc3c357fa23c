"""Known-answer tests of the online spike detector: planted spikes found, noise and smooth decay silent."""

import json
import math

import numpy as np
import pytest
import torch

from forensics.record.detector import DetectorConfig, SpikeDetector, detect_offline


def _decay(n=1000, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return t, (np.exp(-t / 300) + 0.05) * np.exp(noise * rng.standard_normal(n))


def test_planted_spike_found_at_onset_with_peak_and_end():
    t, loss = _decay()
    loss[400] *= 8.0
    loss[401] *= 20.0  # peak one step after onset
    loss[402] *= 3.0
    spikes = detect_offline(t, loss, "robust")
    assert len(spikes) == 1
    s = spikes[0]
    assert (s.onset, s.peak, s.end) == (400, 401, 403)
    assert s.magnitude == pytest.approx(loss[401] / s.baseline)
    assert s.baseline == pytest.approx(np.median(loss[400 - 64:400]), rel=0.05)
    assert not s.nonfinite


def test_smoothly_decaying_loss_is_silent():
    t = np.arange(3000)
    for loss in (np.exp(-t / 200) + 1e-3, 1.0 / np.sqrt(1 + t), np.exp(-t / 50)):
        for preset in ("robust", "zscore", "ratio", "megatron"):
            assert detect_offline(t, loss, preset) == [], preset


def test_small_batch_sgd_noise_is_silent():
    """Per-sample losses of a real SGD run (batch size 1) vary over orders of magnitude."""
    torch.manual_seed(0)
    X = torch.randn(512, 8)
    Y = X @ torch.randn(8, 1) + 0.3 * torch.randn(512, 1)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    for step in range(3000):
        i = torch.randint(0, 512, (1,))
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X[i]), Y[i])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    tail = np.array(losses[500:])
    assert np.quantile(tail, 0.99) / np.quantile(tail, 0.5) > 10  # the noise really is an order of magnitude
    assert detect_offline(range(3000), losses, "robust") == []


def test_chi_square_noise_is_silent_for_robust_preset():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        t = np.arange(5000)
        loss = (np.exp(-t / 1500) + 0.05) * rng.chisquare(1, 5000)
        assert detect_offline(t, loss, "robust") == []


def test_nonfinite_is_a_spike_even_without_history():
    spikes = detect_offline([0, 1, 2, 3], [1.0, float("nan"), float("inf"), 1.0], "robust")
    assert len(spikes) == 1
    assert (spikes[0].onset, spikes[0].end, spikes[0].nonfinite) == (1, 3, True)


def test_diverged_run_does_not_open_a_spike_every_max_len_steps():
    loss = [1.0] * 50 + [float("nan")] * 500
    spikes = detect_offline(range(len(loss)), loss, DetectorConfig(max_len=20))
    assert len(spikes) == 1 and spikes[0].onset == 50 and spikes[0].end == 70


def test_max_len_closes_a_spike():
    t, loss = _decay(600)
    loss[300:] *= 50  # a level shift, not a spike
    s = detect_offline(t, loss, DetectorConfig(max_len=30))
    assert s[0].onset == 300 and s[0].end == 330


def test_other_presets_find_a_big_spike():
    t, loss = _decay(noise=0.02)
    loss[500] *= 100
    for preset in ("zscore", "ratio", "megatron"):
        spikes = detect_offline(t, loss, preset)
        assert [s.onset for s in spikes] == [500], preset


def test_probe_signal():
    t, loss = _decay()
    probe = [None] * len(t)
    for i in range(0, len(t), 10):
        probe[i] = 0.5
    probe[600] = 50.0
    spikes = detect_offline(t, loss, DetectorConfig(signal="probe"), probe=probe)
    assert [(s.onset, s.signal) for s in spikes] == [(600, "probe")]
    both = detect_offline(t, loss, DetectorConfig(signal="both"), probe=probe)
    assert [(s.onset, s.signal) for s in both] == [(600, "probe")]


def test_state_dict_resume_gives_identical_events():
    t, loss = _decay(800)
    loss[300] *= 30
    loss[600] *= 30
    full = SpikeDetector("robust")
    expected = [e for i, v in zip(t, loss) for e in full.update(int(i), float(v))]
    a = SpikeDetector("robust")
    got = [e for i, v in zip(t[:301], loss[:301]) for e in a.update(int(i), float(v))]
    state = json.loads(json.dumps(a.state_dict()))  # JSON-able, survives a checkpoint
    b = SpikeDetector("zscore")
    b.load_state_dict(state)
    got += [e for i, v in zip(t[301:], loss[301:]) for e in b.update(int(i), float(v))]
    assert got == expected
    assert [e["type"] for e in got] == ["spike_open", "spike", "spike_open", "spike"]


def test_config_validation_and_json():
    with pytest.raises(ValueError, match="preset"):
        DetectorConfig(preset="nope")
    with pytest.raises(ValueError, match="signal"):
        DetectorConfig(signal="grad")
    cfg = DetectorConfig(preset="zscore")
    assert (cfg.window, cfg.threshold) == (128, 6.0)
    assert DetectorConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        detect_offline([1, 2], [1.0], "robust")


def test_online_equals_offline():
    t, loss = _decay()
    loss[700] = math.inf
    det = SpikeDetector()
    online = [e for i, v in zip(t, loss) for e in det.update(int(i), float(v)) if e["type"] == "spike"]
    offline = detect_offline(t, loss)
    assert [(e["onset"], e["end"]) for e in online] == [(s.onset, s.end) for s in offline]
