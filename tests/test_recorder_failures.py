"""The recorder never hurts training: budgets, write errors, hook errors and SIGKILL leave a readable run."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
import torch.nn.functional as F

from forensics import Recorder, open_run
from forensics.record.recorder import RecorderWarning


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def _train(model, opt, rec, n, spike_at=()):
    g = torch.Generator().manual_seed(1)
    for t in range(n):
        x = torch.randn(8, 3, generator=g)
        y = x.sum(1, keepdim=True).sin() * (1000.0 if t in spike_at else 1.0)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        rec.observe(loss, {"x": x, "y": y})
        opt.step()


def _recorder_warnings(record):
    return [w for w in record if issubclass(w.category, RecorderWarning)]


def _all_snapshots_load(run):
    for info in run.snapshots:
        info.load()
    files = [p for p in (run.path / "snapshots").iterdir() if p.suffix == ".safetensors"]
    return len(files)


def test_spike_budget_one_warning_scalars_continue(tmp_path):
    model, opt = _setup()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with Recorder(model, opt, tmp_path / "run", max_spikes=1, tail=2, baseline_every=0, steps_chunk=16) as rec:
            _train(model, opt, rec, 200, spike_at={60, 120, 170})
    (w,) = _recorder_warnings(record)
    assert "spike budget exhausted" in str(w.message)
    run = open_run(tmp_path / "run")
    assert [s.onset for s in run.spikes] == [60, 120, 170]  # detection continues
    assert {s.spike_id for s in run.snapshots} == {0}
    assert run.steps.num_rows == 200
    assert sum(e["type"] == "warning" for e in run.events) == 1
    # 4 sparse context states (steps 0, 16, 32, 48), 7 pre, the onset, 2 post
    assert _all_snapshots_load(run) == len(run.snapshots) == 4 + 7 + 1 + 2


def test_spike_budget_keeps_the_sparse_baselines(tmp_path):
    model, opt = _setup()
    with pytest.warns(RecorderWarning, match="spike budget exhausted"):
        with Recorder(model, opt, tmp_path / "run", max_spikes=1, tail=2, baseline_every=50) as rec:
            _train(model, opt, rec, 200, spike_at={60, 120, 170})
    run = open_run(tmp_path / "run")
    baselines = [s.step for s in run.snapshots if s.role == "baseline"]
    assert baselines == [0, 50, 100, 150]  # after the budget ended spike capture at step 120
    assert {s.spike_id for s in run.snapshots if s.role != "baseline"} == {0}


def test_byte_budget_one_warning_earlier_files_intact(tmp_path):
    model, opt = _setup()
    per_snapshot = 4 * 4 * sum(p.numel() for p in model.parameters()) + 8 * 4 * 4 + 4096
    with pytest.warns(RecorderWarning, match="byte budget exhausted") as record:
        with Recorder(model, opt, tmp_path / "run", max_bytes=int(3.5 * per_snapshot), baseline_every=10) as rec:
            _train(model, opt, rec, 100, spike_at={50})
    assert len(_recorder_warnings(record)) == 1
    run = open_run(tmp_path / "run")
    assert [s.step for s in run.snapshots] == [0, 10, 20]
    assert run.steps.num_rows == 100 and [s.onset for s in run.spikes] == [50]
    assert _all_snapshots_load(run) == 3


def test_write_error_training_continues_nothing_earlier_lost(tmp_path, monkeypatch):
    import forensics.rundir.snapshots as snapshots

    real, calls = snapshots.save_snapshot, []

    def flaky(path, tensors, meta):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        return real(path, tensors, meta)

    monkeypatch.setattr(snapshots, "save_snapshot", flaky)
    model, opt = _setup()
    with pytest.warns(RecorderWarning, match="No space left") as record:
        with Recorder(model, opt, tmp_path / "run", baseline_every=10, steps_chunk=16) as rec:
            _train(model, opt, rec, 100, spike_at={50})
            rec.flush()
            assert rec.step == 100
    assert len(_recorder_warnings(record)) == 1
    run = open_run(tmp_path / "run")
    assert [s.step for s in run.snapshots] == [0, 10]
    assert _all_snapshots_load(run) == 2
    assert run.steps.num_rows == 100  # scalars kept flowing
    assert [s.onset for s in run.spikes] == [50]
    assert not [p for p in (run.path / "snapshots").iterdir() if ".tmp-" in p.name]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_snapshot_dir(tmp_path):
    model, opt = _setup()
    with pytest.warns(RecorderWarning, match="failed"):
        with Recorder(model, opt, tmp_path / "run", baseline_every=10) as rec:
            (tmp_path / "run" / "snapshots").chmod(0o500)
            try:
                _train(model, opt, rec, 30)
                rec.flush()
            finally:
                (tmp_path / "run" / "snapshots").chmod(0o700)
    assert open_run(tmp_path / "run").steps.num_rows == 30


def test_error_in_hook_is_contained_unless_strict(tmp_path, monkeypatch):
    model, opt = _setup()
    rec = Recorder(model, opt, tmp_path / "run", baseline_every=0)

    def boom(*a, **k):
        raise RuntimeError("ring exploded")

    monkeypatch.setattr(rec.ring, "capture", boom)
    with pytest.warns(RecorderWarning, match="ring exploded") as record:
        _train(model, opt, rec, 20)
        rec.close()
    assert len(_recorder_warnings(record)) == 1
    assert open_run(tmp_path / "run").steps.num_rows == 20

    model, opt = _setup()
    rec = Recorder(model, opt, tmp_path / "strict", strict=True)
    monkeypatch.setattr(rec.ring, "capture", boom)
    with pytest.raises(RuntimeError, match="ring exploded"):
        _train(model, opt, rec, 1)
    rec.close()


def test_strict_raises_writer_errors(tmp_path, monkeypatch):
    import forensics.rundir.snapshots as snapshots

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshots, "save_snapshot", fail)
    model, opt = _setup()
    rec = Recorder(model, opt, tmp_path / "run", strict=True, baseline_every=1)
    with pytest.raises(RuntimeError, match="No space left"):
        _train(model, opt, rec, 3)
        rec.flush()
    try:  # errors of jobs queued before the first one surfaced may still be reported here
        rec.close()
    except RuntimeError as e:
        assert "No space left" in str(e)


_KILL_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.nn.functional as F
    from forensics import Recorder
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.Tanh(), torch.nn.Linear(512, 512),
                                torch.nn.Tanh(), torch.nn.Linear(512, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rec = Recorder(model, opt, sys.argv[1], tail=1000, baseline_every=1, steps_chunk=8, max_bytes=10**10)
    for t in range(100000):
        x = torch.randn(32, 64)
        y = x[:, :1] * (1000.0 if t == 20 else 1.0)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        rec.observe(loss, {"x": x, "y": y})
        opt.step()
""")


def test_sigkill_mid_run_leaves_a_readable_run(tmp_path):
    run_dir = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(_KILL_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__import__("forensics").__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.time() + 40
        while time.time() < deadline:
            snaps = run_dir / "snapshots"
            done = [p for p in snaps.iterdir() if p.suffix == ".safetensors"] if snaps.is_dir() else []
            if len(done) >= 30 and proc.poll() is None:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = open_run(run_dir)
    n_files = _all_snapshots_load(run)  # every *.safetensors in place loads: no half-written file
    assert n_files >= 30 and len(run.snapshots) == n_files
    steps = run.steps.column("step").to_pylist()
    assert steps == list(range(len(steps))) and len(steps) >= 24
    assert any(s.onset == 20 for s in run.spikes)
