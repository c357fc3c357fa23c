"""Detection from the first step, one report per spike, and the short-batch kind, on planted series
and small real runs (bench/detection_cases.py). Each case has a control where nothing may be
reported."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import detection as bench
import detection_cases as dc

from forensics.record.detector import SpikeDetector, detect_offline
from forensics.record.probe import Probe

# full-batch Adam's first steps (bench case "Adam lr=0.003"): a fast descent, then the loss doubles
ADAM_START = [0.1372, 0.07024, 0.03177, 0.01408, 0.0092, 0.01046, 0.01394, 0.01767, 0.0199, 0.01925,
              0.01593, 0.01133, 0.006975, 0.003907, 0.002492, 0.002512]
ADAM_START += [0.0025 * 0.99 ** i for i in range(60)]


def test_a_smooth_loss_that_doubles_in_its_first_steps_opens_at_once():
    (ep,) = detect_offline(range(len(ADAM_START)), ADAM_START)
    assert (ep.onset, ep.peak) == (8, 8)  # first value above 2x the running minimum (0.0092)
    assert ep.baseline == pytest.approx(0.0092)
    calm = ADAM_START[:5] + [0.0092 * 0.95 ** i for i in range(70)]
    assert detect_offline(range(len(calm)), calm) == []  # the same descent without the bump


def test_noisy_first_losses_rarely_open():
    """Minibatch noise in the first 16 steps of a run (no history, signal="loss"): per-sample
    chi-square(1) losses (x1000 between draws) and 5-sample means of them. The warm-up rule is
    fooled in a few runs in a hundred at most (measured 6% and 0.3%; 0.7% when 6 values could make a
    series smooth; the old first-losses rule:
    16% and 2%)."""
    rates = {}
    for df in (1, 5):
        early = 0
        for seed in range(300):
            loss = 0.5 * np.random.default_rng(seed).chisquare(df, 40) / df
            early += any(e.onset < 16 for e in detect_offline(range(40), loss, {"signal": "loss"}))
        rates[df] = early / 300
    assert rates[1] < 0.08 and rates[5] < 0.015, rates


def _recorded(case, tmp_path, **options):
    torch.set_num_threads(1)
    from forensics import Recorder

    rec = Recorder(case.model, case.make_opt(case.model.parameters()), tmp_path / "run", loss=case.loss_fn,
                   **options)
    truth: list = []
    bench._loop(case, case.model, rec, truth)
    return bench.true_spikes(truth), rec


def test_first_batch_probe_finds_the_catapult_of_the_first_steps_of_small_batch_sgd(tmp_path):
    truth, rec = _recorded(dc.sgd(5, steps=45, ratio=0.5), tmp_path / "a")
    assert truth and truth[0][1] < 10  # the catapult of the first steps (full loss x7)
    ep = rec.spikes[0]
    assert ep.signal == "probe" and ep.onset <= truth[0][1] <= ep.end
    assert len(rec.spikes) == len(truth)
    opened = [e for e in rec._spike_events if e["type"] == "spike_open"]
    assert opened[0]["rule"] == "first_batch"
    truth, rec = _recorded(dc.sgd(5, steps=45, ratio=0.1, control=True), tmp_path / "b")  # noisy SGD
    assert truth == [] and rec.spikes == []


def test_full_batch_training_switches_the_probe_off_at_the_second_batch(tmp_path):
    truth, rec = _recorded(dc.catapult(1.5, steps=20), tmp_path)
    import json

    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    (probe,) = [e for e in events if e["type"] == "probe"]
    assert probe["step"] == 1 and probe["active"] is False
    (ep,) = rec.spikes
    assert ep.signal == "loss" and ep.onset <= truth[0][1] <= ep.end


def test_a_new_probe_set_restarts_the_probe_channel():
    det = SpikeDetector()
    for t in range(30):
        det.update(t, 1.0, probe=0.1, probe_set="a")
    assert det.update(30, 1.0, probe=0.5, probe_set="b") == []  # another set: not comparable
    events = det.update(31, 1.0, probe=2.0, probe_set="b")  # x4 on the same set
    assert events and events[0]["signal"] == "probe"
    same = SpikeDetector()
    for t in range(30):
        same.update(t, 1.0, probe=0.1, probe_set="a")
    assert same.update(30, 1.0, probe=0.5, probe_set="a")  # the same jump on one set opens


def test_an_unrecovered_episode_is_one_report_marked_not_recovered():
    rng = np.random.default_rng(0)
    loss = np.exp(0.05 * rng.standard_normal(800))
    loss[200:] *= 10  # a new level that never comes back
    eps = detect_offline(range(800), loss)
    assert len(eps) == 1 and eps[0].onset == 200 and eps[0].recovered is False
    old_style = detect_offline(range(800), loss, {"max_len": 100, "merge_gap": 0})
    assert len(old_style) == 1  # the continuation is the new normal, not another spike
    recovering = loss.copy()
    recovering[260:] /= 10
    (ep,) = detect_offline(range(800), recovering)
    assert ep.recovered is True and ep.end == 260


def _epochs(kind: str, seed: int, epochs: int = 30, full: int = 12):
    """Loss and rows per step: `full` batches of 32, then a batch of 3 (drop_last=False). Per-sample
    losses are 0.5 chi-square(1); "summed" divides the 3-sample sum by 3 x 3 / 32 (the double
    normalisation of the field report: x32/3 the mean), "mean" is the correct mean (a control)."""
    rng = np.random.default_rng(seed)
    loss, rows = [], []
    for _ in range(epochs):
        for _ in range(full):
            loss.append(0.5 * rng.chisquare(1, 32).mean())
            rows.append(32)
        short = 0.5 * rng.chisquare(1, 3).mean()
        loss.append(short * 32 / 3 if kind == "summed" else short)
        rows.append(3)
    return np.array(loss), rows


@pytest.mark.parametrize("seed", range(4))
def test_short_batches_of_a_batch_size_dependent_loss_are_each_a_spike(seed):
    loss, rows = _epochs("summed", seed)
    eps = detect_offline(range(len(loss)), loss, rows=rows)
    short = [t for t, r in enumerate(rows) if r == 3]
    usual = np.median([v for v, r in zip(loss, rows, strict=True) if r == 32])
    elevated = [t for t in short if loss[t] > 2 * usual]  # the spikes a user sees in the curve
    found = {e.onset for e in eps}
    assert set(elevated) <= found
    assert found <= set(short)  # nothing else
    control, rows = _epochs("mean", seed)  # a correct mean: short batches are only noisier
    det, single = SpikeDetector(), []
    for t, (v, r) in enumerate(zip(control, rows, strict=True)):
        if r == 3 and det.rows.usual() is not None:
            single.append(v > 2 * det.channels["loss"].window_max())  # the single-batch rule
        for e in det.update(t, v, rows=r):
            assert e["type"] != "spike_open" or single[-1]  # only a 3-sample mean above 2x every other
    assert not det.shorts.established(2.0) and sum(single) <= 1


def test_detect_offline_checks_every_column_length():
    with pytest.raises(ValueError, match="probe has 2 values but steps has 3"):
        detect_offline([0, 1, 2], [1.0, 1.0, 1.0], probe=[0.1, 0.1])
    with pytest.raises(ValueError, match="rows has 4 values"):
        detect_offline([0, 1, 2], [1.0, 1.0, 1.0], rows=[32, 32, 32, 3])
    with pytest.raises(ValueError, match="values has 2 values"):
        detect_offline([0, 1, 2], [1.0, 1.0])


def test_probe_skips_the_train_eval_switch_only_where_it_cannot_matter():
    batch = {"x": torch.randn(8, 3), "y": torch.randn(8, 1)}
    keys = {"input": "x", "target": "y"}
    plain = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    dropout = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 1))
    assert Probe(plain, batch, keys, "mse")._toggle() is False
    assert Probe(dropout, batch, keys, "mse")._toggle() is True
    p = Probe(dropout, batch, keys, "mse")
    first = p.loss()
    assert p.loss() == first and dropout.training  # eval mode inside (deterministic), train mode after


def test_sql_and_report_say_an_episode_did_not_recover(tmp_path):
    """A recorded level shift (targets ×10 from step 200 on, lr 0: nothing can recover) is one
    episode with `recovered` false in the SQL spikes view and "not recovered" in the report; the
    control (the shift undone at 260) recovers."""
    from forensics.catalog.report import collect, render_text
    from forensics.catalog.views import connect, query
    from forensics.record.recorder import Recorder

    for name, stop in (("shift", None), ("back", 260)):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        g = torch.Generator().manual_seed(1)
        with Recorder(model, opt, tmp_path / name, loss="mse", probe=None, max_spikes=2) as rec:
            for t in range(500):
                x = torch.randn(32, 4, generator=g)
                y = x.sum(1, keepdim=True) * (10.0 if 200 <= t < (stop or 10**9) else 1.0)
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                rec.observe(loss, {"x": x, "y": y})
                opt.step()
    catalog = connect([str(tmp_path / "shift"), str(tmp_path / "back")])
    rows = query(catalog, "SELECT run_id, onset_step, recovered FROM spikes "
                          "ORDER BY run_id").to_pylist()
    assert [(r["run_id"], r["onset_step"], r["recovered"]) for r in rows] == [("back", 200, True),
                                                                           ("shift", 200, False)]
    text = "\n".join(render_text(collect(catalog), catalog.runs))
    assert "shift:200" in text and "not recovered" in text.split("shift:200", 1)[1].splitlines()[0]
    assert "not recovered" not in text.split("back:200", 1)[1].splitlines()[0]


def test_an_episode_the_run_ends_inside_is_neither_recovered_nor_not():
    """The run ends 20 steps into a x10 level (under max_len): end and recovered are None (unknown),
    in the detector's event and in the Spike read back; a NaN at the last step likewise."""
    from forensics.rundir.spikes import Spike

    rng = np.random.default_rng(0)
    loss = list(np.exp(0.05 * rng.standard_normal(220)))
    loss[200:] = [v * 10 for v in loss[200:]]
    det = SpikeDetector()
    events = [e for t, v in enumerate(loss) for e in det.update(t, float(v))] + det.finish()
    (spike,) = [e for e in events if e["type"] == "spike"]
    assert spike["onset"] == 200 and spike["end"] is None and spike["recovered"] is None
    assert Spike.from_event(spike).recovered is None
    (ep,) = detect_offline(range(221), loss + [float("nan")])
    assert ep.nonfinite and ep.end is None and ep.recovered is None
