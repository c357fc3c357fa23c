"""Detection by kind on small controlled runs (bench/detection_cases.py; the full table is
bench/detection.py): a catapult from init is one episode from the first steps, a control below the
stability limit is silent, an Adam spike with ringing is one report, minibatch SGD spikes of the
full loss are found on the auto probe while a noisy-SGD control and heavy-tailed healthy batches
stay silent."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import detection as bench
import detection_cases as dc

from forensics.record.detector import detect_offline


def _recorded(case, tmp_path, **options):
    torch.set_num_threads(1)
    from forensics import Recorder

    rec = Recorder(case.model, case.make_opt(case.model.parameters()), tmp_path / "run", loss=case.loss_fn,
                   **options)
    truth: list = []
    bench._loop(case, case.model, rec, truth)
    return bench.true_spikes(truth), rec.spikes


@pytest.mark.parametrize("ratio", [1.2, 1.5, 1.8])
def test_catapult_from_init_is_one_episode_from_the_first_steps(tmp_path, ratio):
    case = dc.catapult(ratio, steps=30)
    truth, episodes = _recorded(case, tmp_path)
    assert len(truth) == 1 and len(episodes) == 1
    (_, t_peak, _), ep = truth[0], episodes[0]
    assert ep.onset <= t_peak <= ep.end and ep.onset < 12
    assert ep.magnitude > 5


def test_below_the_stability_limit_is_silent(tmp_path):
    truth, episodes = _recorded(dc.catapult(0.9, steps=30), tmp_path)
    assert truth == [] and episodes == []


def test_warm_up_rule_is_what_finds_it():
    """Old behaviour (no warm-up rule): the catapult of the first steps is invisible."""
    losses = [0.7, 1.4, 4.6, 14.6, 30.9, 26.2, 4.7, 0.2, 0.14] + [0.13 * 0.99 ** i for i in range(40)]
    assert detect_offline(range(len(losses)), losses, {"warmup_ratio": 0}) == []
    (ep,) = detect_offline(range(len(losses)), losses)
    assert ep.onset == 4 and ep.peak == 4 and ep.end == 7  # third value above the level: two steps of lag


def test_adam_spike_with_ringing_is_one_report():
    # a spike x100, down, up x60, down, up x20 within a few steps: one episode with 3 sub-peaks
    base = [0.01 * 0.999 ** i for i in range(200)]
    ring = [1.0, 0.3, 0.007, 0.6, 0.05, 0.007, 0.2, 0.02, 0.007]
    losses = base + ring + [0.0078] * 60
    eps = detect_offline(range(len(losses)), losses)
    assert len(eps) == 1 and len(eps[0].sub_peaks) == 3
    assert eps[0].onset == 200 and eps[0].peak == 200
    old = detect_offline(range(len(losses)), losses, {"merge_gap": 0})
    assert len(old) == 3  # one report per re-trigger without episodes


def test_small_batch_sgd_spikes_found_on_the_probe_and_noisy_control_silent(tmp_path):
    truth, episodes = _recorded(dc.sgd(5, steps=320, ratio=0.5), tmp_path / "a")
    late = [s for s in truth if s[0] >= 64]  # the probe exists from step 64 (the first 64 batches)
    assert len(late) >= 3
    windows = [(e.onset - 2, (e.end or 320) + 2) for e in episodes]
    matched = [s for s in late if any(a <= s[1] <= b for a, b in windows)]
    assert len(matched) >= len(late) - 1
    assert all(e.signal == "probe" for e in episodes)
    truth, episodes = _recorded(dc.sgd(5, steps=320, ratio=0.1, control=True), tmp_path / "b")
    assert truth == [] and episodes == []


def test_heavy_tailed_healthy_batches_are_silent(tmp_path):
    case = dc.heavy(steps=300)
    truth, episodes = _recorded(case, tmp_path)
    assert truth == [] and episodes == []
    # the batch loss alone (no probe) calls some of them spikes: the probe is what keeps it silent
    truth, episodes = _recorded(dc.heavy(steps=300), tmp_path / "noprobe", probe=None)
    assert episodes


def test_offline_redetection_reads_the_probe_and_batch_rows_like_the_recorder(tmp_path):
    """analyze(redetect=True) runs the detector on steps/ with the probe and batch-size
    columns, so a probe-watched run gets back the episodes its recorder found online."""
    from pathlib import Path

    from forensics.analyzer.pipeline import _spikes
    from forensics.rundir.reader import open_run

    run_dir = Path(__file__).resolve().parents[1] / "sample_runs" / "small_batch"
    if not (run_dir / "run.json").is_file():
        pytest.skip("sample_runs/ not recorded")
    run = open_run(run_dir)
    offline, source = _spikes(run, True)
    assert source == "offline" and len(run.spikes) > 3
    assert [(s.onset, s.peak) for s in offline] == [(s.onset, s.peak) for s in run.spikes]
