"""Nothing recorded is lost: exit without close(), garbage collection, a file system that fails for a
while or for good, a run directory deleted mid-run, and temp files left by a killed writer."""

import errno
import gc
import os
import shutil
import subprocess
import sys
import textwrap
import threading
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


def _train(model, opt, rec, steps, spike_at=(), between=None):
    g = torch.Generator().manual_seed(1)
    for t in steps:
        if between is not None:
            between(t)
        x = torch.randn(8, 3, generator=g)
        y = x.sum(1, keepdim=True).sin() * (1000.0 if t in spike_at else 1.0)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if rec is not None:
            rec.observe(loss, {"x": x, "y": y})
        opt.step()


def _env():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__import__("forensics").__file__)))
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _recorder_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, RecorderWarning)]


_NO_CLOSE = textwrap.dedent("""
    import sys, torch, torch.nn.functional as F
    from forensics import Recorder
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    rec = Recorder(model, opt, sys.argv[1], steps_chunk=256, baseline_every=0)
    for t in range(200):
        x = torch.randn(4, 3)
        opt.zero_grad()
        loss = F.mse_loss(model(x), x[:, :1])
        loss.backward()
        rec.observe(loss, {"x": x, "y": x[:, :1]})
        opt.step()
    # no rec.close(): the interpreter exits with every row still in the buffer
""")


def test_exit_without_close_keeps_every_row(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_NO_CLOSE)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=120, env=_env(), check=False)
    assert out.returncode == 0, out.stderr
    steps = open_run(tmp_path / "run").steps.column("step").to_pylist()
    assert steps == list(range(200))


def test_garbage_collected_recorder_flushes(tmp_path):
    def train_and_forget():
        model, opt = _setup()
        rec = Recorder(model, opt, tmp_path / "run", steps_chunk=256, baseline_every=0)
        _train(model, opt, rec, range(50))
        # rec, model and opt go out of scope here without close()

    train_and_forget()
    gc.collect()
    assert open_run(tmp_path / "run").steps.column("step").to_pylist() == list(range(50))


class _Outage:
    """Make the run-directory write functions raise `err` while `down` is set."""

    def __init__(self, monkeypatch, err):
        from forensics.rundir import events, snapshots, steps

        self.down, self.err, self.failed = False, err, {"chunk": 0, "snapshot": 0, "event": 0}
        real_chunk, real_snap, real_append = steps.write_chunk, snapshots.save_snapshot, events.EventLog.append

        def gate(kind, real):
            def wrapped(*a, **k):
                if self.down:
                    self.failed[kind] += 1
                    raise OSError(self.err, os.strerror(self.err))
                return real(*a, **k)
            return wrapped

        monkeypatch.setattr(steps, "write_chunk", gate("chunk", real_chunk))
        monkeypatch.setattr(snapshots, "save_snapshot", gate("snapshot", real_snap))
        monkeypatch.setattr(events.EventLog, "append", gate("event", real_append))


@pytest.mark.parametrize("err", [errno.EROFS, errno.ENOSPC])
def test_outage_then_recovery_every_row_and_event_lands(tmp_path, monkeypatch, err):
    out = _Outage(monkeypatch, err)
    model, opt = _setup()

    def between(t):
        out.down = 40 <= t < 120
        if t in (60, 80, 100):
            rec.flush()  # a flush during the outage must not raise or drop anything

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        rec = Recorder(model, opt, tmp_path / "run", steps_chunk=16, baseline_every=0, tail=2)
        _train(model, opt, rec, range(200), spike_at={70, 150}, between=between)
        rec.close()
    assert out.failed["chunk"] >= 3 and out.failed["event"] >= 1  # the outage really hit the writer
    run = open_run(tmp_path / "run")
    assert run.steps.column("step").to_pylist() == list(range(200))  # rows kept in memory and retried
    assert [s.onset for s in run.spikes] == [70, 150]  # the spike event of the outage too
    st = rec.status
    assert st.rows_written == 200 and st.rows_lost == 0 and st.rows_pending == 0
    assert st.events_lost == 0 and st.events_pending == 0
    msgs = _recorder_warnings(record)
    assert any("retried" in m and os.strerror(err) in m for m in msgs), msgs
    assert not any("could not be written" in m for m in msgs), msgs


def test_outage_for_good_reports_the_loss_and_training_is_unharmed(tmp_path, monkeypatch):
    out = _Outage(monkeypatch, errno.EROFS)
    model, opt = _setup()
    pending_seen = []

    def between(t):
        if t == 50:
            rec.flush()  # steps 0-49 are on disk when the file system goes read-only
        out.down = t >= 50
        if t % 10 == 0:
            pending_seen.append(rec.status.rows_pending)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        rec = Recorder(model, opt, tmp_path / "run", steps_chunk=16, baseline_every=0, max_pending_rows=64)
        _train(model, opt, rec, range(200), spike_at={120}, between=between)
        rec.close()  # never raises
    st = rec.status
    assert st.rows_written == 50
    assert st.rows_written + st.rows_lost == 200 and st.rows_pending == 0
    assert max(pending_seen) <= 64  # the in-memory backlog is bounded
    assert st.events_lost >= 2  # spike_open + spike of step 120 and the close event
    msgs = _recorder_warnings(record)
    assert any("150 step rows" in m and "could not be written" in m for m in msgs), msgs
    assert len(msgs) == len(set(msgs))  # each warning once
    assert open_run(tmp_path / "run").steps.num_rows == 50
    # control: the recorder's trouble did not change training
    ref_model, ref_opt = _setup()
    _train(ref_model, ref_opt, None, range(200), spike_at={120})
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_step_chunks_are_written_before_queued_snapshots(tmp_path, monkeypatch):
    from forensics.rundir import snapshots, steps

    order, release = [], threading.Event()
    real_chunk, real_snap = steps.write_chunk, snapshots.save_snapshot

    def slow_snapshot(path, *a, **k):
        order.append(("snapshot", path.name))
        release.wait(10)  # the first snapshot holds the writer while later jobs queue up
        return real_snap(path, *a, **k)

    def chunk(run_dir, index, rows):
        order.append(("chunk", index))
        return real_chunk(run_dir, index, rows)

    monkeypatch.setattr(snapshots, "save_snapshot", slow_snapshot)
    monkeypatch.setattr(steps, "write_chunk", chunk)
    model, opt = _setup()
    rec = Recorder(model, opt, tmp_path / "run", steps_chunk=4, baseline_every=1)
    _train(model, opt, rec, range(6))  # snapshots 0..5 queued, chunk 0 (steps 0-3) queued at step 4
    release.set()
    rec.close()
    first_chunk = order.index(("chunk", 0))
    assert first_chunk <= 1, order  # at most the snapshot already being written went first (FIFO: 5)


@pytest.mark.parametrize("how", ["deleted", "replaced", "run.json removed"])
def test_run_directory_gone_mid_run_stops_writing_with_one_warning(tmp_path, how):
    run_dir = tmp_path / "run"
    model, opt = _setup()

    def between(t):
        if t == 50:
            rec.flush()
            if how == "run.json removed":
                (run_dir / "run.json").unlink()
            else:
                shutil.rmtree(run_dir)
                if how == "replaced":
                    run_dir.mkdir()

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        rec = Recorder(model, opt, run_dir, steps_chunk=16, baseline_every=10)
        _train(model, opt, rec, range(100), spike_at={70}, between=between)
        rec.close()
    msgs = [m for m in _recorder_warnings(record) if "run directory" in m]
    assert len(msgs) == 1 and "stopped" in msgs[0], _recorder_warnings(record)
    if how == "run.json removed":
        assert sorted(p.name for p in (run_dir / "steps").iterdir()) == [f"chunk-{i:08d}.parquet" for i in range(4)]
        assert not (run_dir / "snapshots" / "step-00000060.safetensors").exists()
    elif how == "replaced":
        assert list(run_dir.iterdir()) == []  # no folders recreated without run.json
    else:
        assert not run_dir.exists()
    assert rec.status.stopped and rec.status.rows_written == 50


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temp_files_are_removed_at_open_and_close(tmp_path):
    run_dir = tmp_path / "run"
    dead = _dead_pid()
    (run_dir / "steps").mkdir(parents=True)
    (run_dir / "snapshots").mkdir()
    stale_open = [run_dir / f"run.json.tmp-{dead}-0", run_dir / "steps" / f"chunk-00000000.parquet.tmp-{dead}-3",
                  run_dir / "snapshots" / f"step-00000007.safetensors.tmp-{dead}-1"]
    for p in stale_open:
        p.write_bytes(b"half")
    model, opt = _setup()
    rec = Recorder(model, opt, run_dir, steps_chunk=8, baseline_every=5)
    assert [p for p in stale_open if p.exists()] == []  # gone when the run is opened for writing
    _train(model, opt, rec, range(20))
    rec.flush()
    dead = _dead_pid()
    stale_close = [run_dir / "snapshots" / f"step-00000010.safetensors.tmp-{dead}-9",
                   run_dir / "steps" / f"chunk-00000001.parquet.tmp-{os.getpid()}-99"]
    live_other = run_dir / "snapshots" / f"step-00000015.safetensors.tmp-{os.getppid()}-0"
    for p in [*stale_close, live_other]:
        p.write_bytes(b"half")
    rec.close()
    assert [p for p in stale_close if p.exists()] == []  # gone at close
    assert live_other.exists()  # a live process's write in progress is left alone
    run = open_run(run_dir)
    assert run.steps.num_rows == 20 and [s.step for s in run.snapshots] == [0, 5, 10, 15]
