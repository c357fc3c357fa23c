"""Recorder(resume=True): the same run directory, detector state restored, numbering continued;
the spikes SQL view agrees with the one spikes builder; the recorder's own temp files are cleaned."""

import json
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from forensics import Recorder
from forensics.record.warn import RecorderWarning
from forensics.rundir import atomic
from forensics.rundir.reader import open_run
from forensics.rundir.spikes import spikes_from_events


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def _data(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g)
    return [(x, x.sum(1, keepdim=True).sin())] * n  # full batch: no probe, the loss is the objective


def _train(model, opt, rec, data, spike_at=(), reported=None):
    """SGD steps; `spike_at` multiplies the targets (a real spike), `reported` ({step: factor}) only
    the loss reported to the recorder (a clean spike shape, the training untouched)."""
    for t, (x, y) in enumerate(data):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y * (30.0 if t in spike_at else 1.0))
        loss.backward()
        rec.observe(loss * (reported or {}).get(t, 1.0), {"x": x, "y": y})
        opt.step()


def test_resume_continues_steps_chunks_and_detector_state(tmp_path):
    model, opt = _setup()
    run = tmp_path / "run"
    with Recorder(model, opt, run, steps_chunk=16, baseline_every=0) as rec:
        _train(model, opt, rec, _data(100))
    state = json.loads((run / "detector.json").read_text())
    assert state["step"] == 99 and state["detector"]["channels"]["loss"]["count"] == 100
    chunks = sorted(p.name for p in (run / "steps").glob("*.parquet"))
    # a new process: a fresh Recorder over the same folder; a spike 2 steps after the resume
    with Recorder(model, opt, run, steps_chunk=16, baseline_every=0, resume=True) as rec:
        assert rec.step == 100
        _train(model, opt, rec, _data(40), spike_at={2})
        assert [s.onset for s in rec.spikes] == [102]
    r = open_run(run)
    assert r.steps.column("step").to_pylist() == list(range(140))
    new = sorted(p.name for p in (run / "steps").glob("*.parquet"))
    assert new[:len(chunks)] == chunks and len(new) > len(chunks)  # numbering continued, nothing rewritten
    assert [(s.onset, s.spike_id) for s in r.spikes] == [(102, 0)]
    assert any(e["type"] == "resume" and e["step"] == 100 for e in r.events)
    assert {s.role for s in r.snapshots if s.spike_id == 0} >= {"pre", "onset"}  # history around it


def test_without_resume_a_new_recorder_sees_it_by_the_warm_up_rule_two_steps_late(tmp_path):
    """A fresh run over trained weights has no window: only the warm-up rule (first losses as
    reference, three high values in a row) sees the same spike, at its third step; no `pre` window."""
    model, opt = _setup()
    with Recorder(model, opt, tmp_path / "a", baseline_every=0) as rec:
        _train(model, opt, rec, _data(100))
    with Recorder(model, opt, tmp_path / "b", baseline_every=0) as rec:
        _train(model, opt, rec, _data(20), spike_at={2})
        assert [s.onset for s in rec.spikes] == [4]


def test_resume_without_a_run_starts_one_and_overwrite_conflicts(tmp_path):
    model, opt = _setup()
    with pytest.warns(RecorderWarning, match="holds no run"):  # a mistyped path is said, not silent
        rec = Recorder(model, opt, tmp_path / "run", resume=True, baseline_every=0)
    with rec:
        _train(model, opt, rec, _data(5))
    assert open_run(tmp_path / "run").steps.num_rows == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecorderWarning)  # resuming the run it made: no such warning
        Recorder(model, opt, tmp_path / "run", resume=True, baseline_every=0).close()
    try:
        Recorder(model, opt, tmp_path / "run", resume=True, overwrite=True)
    except ValueError as e:
        assert "contradict" in str(e)
    else:
        raise AssertionError("resume and overwrite together must be refused")


def test_resume_replays_rows_the_state_file_missed(tmp_path):
    model, opt = _setup()
    run = tmp_path / "run"
    with Recorder(model, opt, run, steps_chunk=16, baseline_every=0) as rec:
        _train(model, opt, rec, _data(100))
    # as if killed after chunk 3: the state file covers steps 0..47 only
    state = json.loads((run / "detector.json").read_text())
    from forensics.record.detector import SpikeDetector

    det = SpikeDetector(state["detector"]["config"])
    steps = open_run(run).steps.to_pydict()
    for s, v in zip(steps["step"][:48], steps["loss"][:48]):
        det.update(s, v)
    (run / "detector.json").write_text(json.dumps({"step": 47, "detector": det.state_dict()}))
    with Recorder(model, opt, run, baseline_every=0, resume=True) as rec:
        assert rec.detector.channels["loss"].count == 100
        assert rec.detector.rows.counts == {64: 52}  # steps 48..99 replayed with their batch sizes


def test_sql_spikes_view_agrees_with_the_spikes_builder(tmp_path):
    from forensics.catalog.views import connect, query

    model, opt = _setup()
    run = tmp_path / "runs" / "r"
    with Recorder(model, opt, run, baseline_every=0) as rec:
        _train(model, opt, rec, _data(160), reported={60: 100, 61: 5, 64: 50, 120: 20, 158: 30, 159: 30})
    events = open_run(run).events
    want = [(s.spike_id, s.onset, s.peak, s.end, len(s.sub_peaks)) for s in spikes_from_events(events)]
    assert any(n > 1 for *_, n in want)  # an episode with sub-peaks, and one still open at the end
    assert any(end is None for _, _, _, end, _ in want)
    cat = connect([tmp_path / "runs"])
    got = query(cat, "SELECT spike_id, onset_step, peak_step, end_step, sub_peaks FROM spikes "
                     "ORDER BY onset_step").to_pylist()
    assert [tuple(r.values()) for r in got] == want


def test_recorder_removes_its_own_stale_temps_at_open(tmp_path):
    run = tmp_path / "run"
    (run / "steps").mkdir(parents=True)
    own = run / "steps" / f"chunk-00000000.parquet.tmp-{os.getpid()}-7"
    own.write_bytes(b"x")
    assert atomic.clean_stale_temps(run) == []  # by default a live process's temp files are kept
    model, opt = _setup()
    Recorder(model, opt, run, baseline_every=0).close()
    assert not own.exists()


def test_state_with_non_finite_values_round_trips(tmp_path):
    model, opt = _setup()
    run = tmp_path / "run"
    with Recorder(model, opt, run, baseline_every=0) as rec:
        _train(model, opt, rec, _data(30), reported={29: float("nan")})  # a NaN spike open at close
    text = (run / "detector.json").read_text()
    assert "NaN" not in text and '"nan"' in text  # strict JSON, the NaN-safe helper's strings
    with Recorder(model, opt, run, baseline_every=0, resume=True) as rec:
        sp = rec.detector.open
        assert sp is not None and sp["onset"] == 29 and math.isnan(sp["peak_loss"])
