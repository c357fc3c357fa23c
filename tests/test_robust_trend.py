"""Known answers for the default detector's trend fit (forensics.math.robust_trend) and the false
alarm it fixes: a healthy stationary minibatch loss flagged at the first full window."""

import itertools
import math

import numpy as np
import pytest
import torch

from forensics.math.robust_trend import SMALL_WINDOW, mann_kendall_z, trend_center_scale
from forensics.record.detector import SpikeDetector, detect_offline


def test_mann_kendall_known_values():
    n = 10
    var = n * (n - 1) * (2 * n + 5) / 18
    assert mann_kendall_z(np.arange(n, dtype=float)) == pytest.approx(45 / math.sqrt(var))  # all pairs rise
    assert mann_kendall_z(-np.arange(n, dtype=float)) == pytest.approx(-45 / math.sqrt(var))
    y = np.array([1.0, 3.0, 2.0, 2.0])  # pairs: +1 +1 +1, -1 -1, 0 -> S = 1
    assert mann_kendall_z(y) == pytest.approx(1 / math.sqrt(4 * 3 * 13 / 18))
    # the brute-force definition on random series
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.standard_normal(17)
        s = sum(np.sign(y[j] - y[i]) for i, j in itertools.combinations(range(17), 2))
        assert mann_kendall_z(y) == pytest.approx(s / math.sqrt(17 * 16 * 39 / 18))
    with pytest.raises(ValueError, match="at least 2"):
        mann_kendall_z(np.array([1.0]))


def test_a_clear_line_is_extrapolated_and_noise_is_not():
    n = 32
    rising = 1.0 + 0.1 * np.arange(n)  # log L rising 0.1 per step: next value 1 + 0.1 n
    center, scale = trend_center_scale(rising, window=n, floor=0.01)
    assert center == pytest.approx(1.0 + 0.1 * n) and scale == pytest.approx(0.01)  # exact line: the floor
    # a falling line's prediction (5 - 0.1 n) is floored at its last value (the knee guard)
    falling = 5.0 - 0.1 * np.arange(n)
    assert trend_center_scale(falling, window=n, floor=0.01)[0] == pytest.approx(falling[-1])
    # stationary noise whose halves happen to differ: no trend the Mann-Kendall test accepts, so
    # the prediction is the median and the spread the scatter's, not a slope's residuals
    y = np.log([7.78, 7.4, 3.84, 7.16, 6.51, 6.06, 6.41, 6.18, 4.5, 3.78, 4.9, 4.88, 5.15, 5.06, 4.83, 7.34])
    assert abs(mann_kendall_z(y)) < 2
    center, scale = trend_center_scale(y, window=64, floor=0.01)
    assert center == pytest.approx(np.median(y))
    flat_mad = 1.4826 * np.median(np.abs(y - np.median(y)))
    inflation = math.sqrt((1 + SMALL_WINDOW / 16) / (1 + SMALL_WINDOW / 64))
    assert scale == pytest.approx(flat_mad * inflation)
    # that window at full size: no inflation
    assert trend_center_scale(y, window=16, floor=0.01)[1] == pytest.approx(flat_mad)


def test_step_to_step_noise_floors_a_lucky_residual_spread():
    """A falling line plus a period-3 pattern whose steps are +1, 0, -1: two thirds of the values sit
    exactly on (line + 1), so the residual MAD is 0, while the successive differences (-1, 0, +1
    about the slope) have MAD 1: the spread is 1.4826 * 1 / sqrt 2."""
    n = 64
    steps = np.tile([1.0, 0.0, -1.0], n)[: n - 1] - 0.05
    y = np.concatenate([[0.0], np.cumsum(steps)])
    assert mann_kendall_z(y) < -2  # the trend is kept
    _, scale = trend_center_scale(y, window=n, floor=0.01)
    assert scale == pytest.approx(1.4826 / math.sqrt(2), rel=1e-9)


def _stationary_loss(seed: int, steps: int = 120) -> list[float]:
    """Minibatch MSE of an untrained Linear(4, 1) on y = sum(x), batch 32, lr 0: a stationary loss."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            x = torch.randn(32, 4, generator=g)
            out.append(torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)).item())
    return out


def test_healthy_stationary_minibatch_loss_is_silent_at_the_first_full_window():
    """The false alarm of the previous fit: at step 16 of seed 0 a noise slope put the baseline at
    4.4 against a median of 5.6 and a residual spread of 0.046 (scatter 0.22) gave z = 18."""
    for seed in range(40):
        loss = _stationary_loss(seed)
        assert detect_offline(range(len(loss)), loss, {"preset": "robust", "warmup_ratio": 0}) == [], seed


def test_filling_window_false_alarms_on_stationary_noise_and_planted_spikes_still_found():
    """Log-normal noise (sigma 0.3 in log L) for 80 steps, 300 series: the window rule (steps 16..79,
    window filling from 16 to 64) opens nothing; the same series with a x100 value planted at a step
    in 20..70 (15 sigma) open there, once."""
    rng = np.random.default_rng(7)
    false, found = 0, 0
    for i in range(300):
        loss = np.exp(0.3 * rng.standard_normal(80))
        false += len(detect_offline(range(80), loss, {"preset": "robust", "warmup_ratio": 0}))
        at = 20 + i % 51
        loss[at] *= 100.0
        spikes = detect_offline(range(80), loss, {"preset": "robust", "warmup_ratio": 0})
        found += [s.onset for s in spikes] == [at]
    assert false == 0
    assert found == 300


def test_a_trend_is_still_followed_on_a_filling_window():
    """A loss falling x0.97 per step with 2% noise: the x50 bump at step 30 (window of 30 values) is
    found at its first rising step; without the trend the median would sit far above it."""
    rng = np.random.default_rng(3)
    t = np.arange(60)
    loss = 3.0 * np.exp(-0.03 * t + 0.02 * rng.standard_normal(60))
    loss[30:33] *= np.array([50 ** (1 / 3), 50 ** (2 / 3), 50.0])
    det = SpikeDetector({"preset": "robust", "warmup_ratio": 0})
    opens = [e for s, v in zip(t, loss, strict=True) for e in det.update(int(s), float(v))
             if e["type"] == "spike_open"]
    assert [e["step"] for e in opens] == [30]
    # the trend's prediction (floored at the last 8 values), far under the window's median
    assert opens[0]["baseline"] == pytest.approx(loss[22:30].min(), rel=0.05)
    assert opens[0]["baseline"] < 0.7 * np.median(loss[:30])
