"""Hostile and careless run directories (issue 11): every file read stays inside the run, run.json
and events.jsonl are validated once with errors naming the file, one bad file is named and skipped
while the rest still reads, snapshot bytes are verified, and stale temp files are cleaned."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

import forensics.cli as cli
from forensics.catalog.views import connect, query
from forensics.rundir import atomic
from forensics.rundir.events import read_events
from forensics.rundir.format import CorruptFileError, RunFormatError, snapshot_name
from forensics.rundir.reader import open_run
from forensics.rundir.snapshots import load_snapshot, save_snapshot
from forensics.rundir.steps import read_steps, write_chunk
from test_catalog_fixtures import make_run

SAMPLE = Path(__file__).resolve().parents[1] / "sample_runs"


@pytest.fixture()
def two(tmp_path) -> Path:
    """Two copies of a small sample run (4 baseline snapshots each): `a` and `b`."""
    for name in ("a", "b"):
        shutil.copytree(SAMPLE / "clean_gd", tmp_path / name)
        manifest = json.loads((tmp_path / name / "run.json").read_text())
        (tmp_path / name / "run.json").write_text(json.dumps({**manifest, "run_id": name}))
    return tmp_path


def _set_manifest(run: Path, **changes) -> None:
    path = run / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _append_event(run: Path, event: dict) -> None:
    with open(run / "events.jsonl", "a") as f:
        f.write(json.dumps(event) + "\n")


# --- paths outside the run ------------------------------------------------------------------

@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_snapshot_entry_outside_the_run_is_refused(two, where):
    other = two / "b" / "snapshots" / snapshot_name(0)
    entry = os.path.relpath(other, two / "a") if where == "relative" else str(other)
    (two / "a" / "snapshots" / snapshot_name(0)).unlink()
    _append_event(two / "a", {"type": "snapshot", "step": 0, "role": "baseline", "spike_id": None,
                              "file": entry, "bytes": 1})
    with pytest.raises(RunFormatError, match=r"events\.jsonl.*outside the run"):
        _ = open_run(two / "a").snapshots


def test_snapshots_folder_linked_to_another_run_is_refused(two):
    shutil.rmtree(two / "a" / "snapshots")
    (two / "a" / "snapshots").symlink_to(two / "b" / "snapshots")
    with pytest.raises(RunFormatError, match=r"a/(events\.jsonl|snapshots).*outside the run"):
        _ = open_run(two / "a").snapshots
    cat = connect(two)
    assert [r.run_id for r in cat.runs] == ["b"]
    assert any(str(two / "a") in n and "outside the run" in n for n in cat.notes)


def test_steps_chunk_linked_outside_the_run_is_refused(two):
    chunk = two / "a" / "steps" / "chunk-00000000.parquet"
    chunk.unlink()
    chunk.symlink_to(two / "b" / "steps" / "chunk-00000000.parquet")
    with pytest.raises(RunFormatError, match="chunk-00000000.parquet.*outside the run"):
        _ = open_run(two / "a").steps
    assert [r.run_id for r in connect(two).runs] == ["b"]


def test_analysis_folder_linked_outside_is_neither_read_nor_written(two, tmp_path):
    from forensics.analyzer.store import write_analysis

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (two / "a" / "analysis").symlink_to(elsewhere)
    with pytest.raises(RunFormatError, match="analysis.*outside the run"):
        write_analysis(two / "a", {}, {"created": "now"})
    assert list(elsewhere.iterdir()) == []
    write_analysis(two / "b", {}, {"created": "now"})
    shutil.copytree(two / "b" / "analysis", elsewhere, dirs_exist_ok=True)
    cat = connect(two)
    assert [r.run_id for r in cat.runs] == ["b"]
    assert any("analysis" in n and "outside the run" in n for n in cat.notes)


# --- run.json and events.jsonl, validated once --------------------------------------------

@pytest.mark.parametrize("version", [True, False, -5, 0, "1", 1.0, None, 2])
def test_bad_format_version_is_refused_naming_run_json(two, version):
    _set_manifest(two / "a", format_version=version)
    with pytest.raises(RunFormatError, match=r"a/run\.json.*format_version"):
        open_run(two / "a")


@pytest.mark.parametrize("change", [
    {"optimizer": [1]}, {"optimizer": {"class": 7}}, {"optimizer": {"class": "x", "param_groups": [1]}},
    {"optimizer": {"class": "x", "param_groups": [{"lr": "fast"}]}}, {"params": "all"},
    {"params": [{"name": 3}]}, {"seed": "abc"}, {"seed": True}, {"model": {"factory": 1}},
    {"task": [1]}, {"run_id": 5}, {"batch_keys": {"input": 1}}, {"hf_config": "../../x.json"},
])
def test_bad_manifest_fields_are_refused_naming_run_json(two, change):
    _set_manifest(two / "a", **change)
    with pytest.raises(RunFormatError, match=r"a/run\.json"):
        open_run(two / "a")


def test_manifest_round_trips_and_decides_the_optimizer_family_once(tmp_path):
    from forensics.rundir.manifest import build_manifest, load_manifest, write_manifest

    class Tuned(torch.optim.Adam):  # a subclass: "adam" by its class hierarchy, not its name
        pass

    model = torch.nn.Linear(2, 1)
    cases = [(Tuned, "adam"), (torch.optim.AdamW, "adam"), (torch.optim.SGD, "sgd"),
             (torch.optim.Adagrad, "other")]
    for cls, family in cases:
        run = tmp_path / cls.__name__
        run.mkdir()
        manifest = build_manifest(model, cls(model.parameters(), lr=0.1), run_id=cls.__name__,
                                  model_factory=None, model_kwargs=None, loss="mse", batch_keys={},
                                  detector={}, recorder={}, task={"grid": [1, 2]}, seed=3)
        write_manifest(run, manifest)
        typed = load_manifest(run)
        assert typed.optimizer.family == family and typed.seed == 3
        assert typed.to_dict() == manifest == open_run(run).manifest
    # a run.json written before the family existed: derived from the class path by the name rule
    old = json.loads((SAMPLE / "eos" / "run.json").read_text())
    del old["optimizer"]["family"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.json").write_text(json.dumps(old))
    assert load_manifest(tmp_path / "old").optimizer.family == "sgd"


@pytest.mark.parametrize("event", [
    {"type": "spike_open", "spike_id": "abc", "step": 5, "loss": 1.0, "baseline": 0.5},
    {"type": "spike", "spike_id": 0, "onset": "x", "peak": 6, "end": None, "peak_loss": 1.0,
     "baseline": 0.5, "magnitude": 2.0},
    {"type": "spike", "spike_id": 0, "onset": 5, "peak": 6, "end": None, "peak_loss": [1],
     "baseline": 0.5, "magnitude": 2.0},
    {"type": "snapshot", "step": 0, "role": "baseline", "spike_id": None, "file": 3, "bytes": 1},
    {"type": 7}, ["not", "an", "object"],
])
def test_bad_event_is_refused_naming_the_file_and_line(two, event):
    line = len((two / "a" / "events.jsonl").read_text().splitlines()) + 1
    _append_event(two / "a", event)
    with pytest.raises(RunFormatError, match=rf"a/events\.jsonl: line {line}"):
        _ = open_run(two / "a").events


def test_catalog_and_report_skip_one_bad_run_and_say_so(two):
    _set_manifest(two / "a", optimizer=[1])
    make_run(two, "c", analyzed=False)
    _append_event(two / "c", {"type": "spike_open", "spike_id": "abc", "step": 5, "loss": 1.0,
                              "baseline": 0.5})
    cat = connect(two)
    assert [r.run_id for r in cat.runs] == ["b"]
    assert sorted(cat.skipped) == [str((two / "a").resolve()), str((two / "c").resolve())]
    r = CliRunner().invoke(cli.app, ["report", str(two)])
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    assert "b: no spikes" in r.stdout
    assert str(two / "a" / "run.json") in r.stderr and str(two / "c" / "events.jsonl") in r.stderr


def test_events_replaced_by_garbage_are_unreadable_not_clean(two):
    (two / "a" / "events.jsonl").write_bytes(bytes(range(256)) * 40)
    with pytest.raises(CorruptFileError, match="events.jsonl"):
        _ = open_run(two / "a").events
    (two / "b" / "events.jsonl").write_bytes(b"\x8f\x01garbage without a newline")
    with pytest.raises(CorruptFileError, match="events.jsonl"):
        _ = open_run(two / "b").events
    r = CliRunner().invoke(cli.app, ["report", str(two)])
    assert r.exit_code == 3 and "no spikes" not in r.stdout, r.output


def test_one_torn_last_line_is_tolerated_with_a_note(two):
    with open(two / "a" / "events.jsonl", "ab") as f:
        f.write(b'{"type": "snapshot", "st')  # killed mid-append: no newline
    run = open_run(two / "a")
    assert [e["type"] for e in run.events][-1] == "close"
    assert any("torn last line" in n for n in run.notes)
    whole = (two / "b" / "events.jsonl").read_bytes()
    (two / "a" / "events.jsonl").write_bytes(whole.rstrip(b"\n"))  # a whole last event, no newline: kept
    n = len(whole.splitlines())
    assert len(read_events(two / "a")) == n
    (two / "a" / "events.jsonl").write_bytes(whole + b"{garbage}\n")
    with pytest.raises(CorruptFileError, match=f"line {n + 1}"):  # complete (newline-ended) lines must parse
        read_events(two / "a")


# --- one bad file is named and skipped, the rest still reads -----------------------------------

def _string_loss_chunk(run: Path, index: int) -> Path:
    path = run / "steps" / f"chunk-{index:08d}.parquet"
    pq.write_table(pa.table({"step": pa.array([1000, 1001], pa.int64()),
                             "loss": pa.array(["high", "low"])}), path)
    return path


def test_parquet_chunk_with_wrong_types_is_named_and_skipped(two):
    bad = _string_loss_chunk(two / "a", 7)
    run = open_run(two / "a")
    steps = run.steps
    assert steps.num_rows == 301 and steps.column("loss").null_count == 0
    assert any(str(bad) in n and "loss" in n for n in run.notes)
    with pytest.warns(UserWarning, match="chunk-00000007.parquet"):
        assert read_steps(two / "a").num_rows == 301
    cat = connect(two / "a")
    got = query(cat, "SELECT count(*) AS n, count(loss) AS losses FROM steps").to_pylist()
    assert got == [{"n": 301, "losses": 301}]
    assert any(str(bad) in n for n in cat.notes) and cat.runs
    r = CliRunner().invoke(cli.app, ["report", str(two / "a")])
    assert "a: no spikes (301 steps; 1 unreadable file(s) skipped" in r.stdout and str(bad) in r.stderr


def test_garbage_and_fifo_snapshots_are_named_and_skipped(two):
    snaps = two / "a" / "snapshots"
    (snaps / snapshot_name(100)).write_bytes(b"\x00" * 64)  # listed in events.jsonl
    (snaps / snapshot_name(150)).write_bytes(b"not a safetensors file")  # not in the log
    os.mkfifo(snaps / snapshot_name(250))
    run = open_run(two / "a")
    assert [s.step for s in run.snapshots] == [0, 200, 300]
    notes = " ".join(run.notes)
    for step in (100, 150, 250):
        assert snapshot_name(step) in notes
    assert torch.is_tensor(next(iter(run.snapshot(200).load().params.values())))


# --- snapshot integrity ----------------------------------------------------------------------

def test_flipped_snapshot_byte_is_detected_and_old_files_load_unverified(tmp_path):
    path = tmp_path / snapshot_name(3)
    save_snapshot(path, {"param/w": torch.arange(1000.0), "grad/w": torch.ones(1000)}, {"step": 3})
    assert load_snapshot(path).verified is True
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x01  # one bit of one float: still a well-formed safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=snapshot_name(3) + ".*digest"):
        load_snapshot(path)
    from safetensors.torch import save_file

    old = tmp_path / snapshot_name(5)  # written as before digests: no sha256 in the header
    save_file({"param/w": torch.ones(3)}, str(old), metadata={"step": "5"})
    assert load_snapshot(old).verified is False


def test_flipped_header_byte_is_detected(tmp_path):
    path = tmp_path / snapshot_name(4)
    save_snapshot(path, {"param/w": torch.ones(10)}, {"step": 4, "lr": 0.001})
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"0.001"', b'"0.002"', 1))
    with pytest.raises(CorruptFileError, match="digest"):
        load_snapshot(path)


def test_sample_runs_still_open_and_load_verified():
    for run_dir in sorted(p for p in SAMPLE.iterdir() if (p / "run.json").is_file()):
        run = open_run(run_dir)
        assert run.snapshots and run.events and run.steps.num_rows > 0
        assert run.snapshots[0].load().verified is True  # re-recorded with digests (fix13)


# --- stale temp files ------------------------------------------------------------------------

def test_stale_temp_files_are_cleaned_live_ones_kept(tmp_path):
    run = tmp_path / "run"
    write_chunk(run, 0, {"step": [0], "loss": [1.0]})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = [run / f"run.json.tmp-{dead}-0", run / "steps" / f"chunk-00000001.parquet.tmp-{dead}-3",
             run / "snapshots" / f"{snapshot_name(5)}.tmp-{dead}-1"]
    live = run / "steps" / f"chunk-00000002.parquet.tmp-{os.getppid()}-0"  # our parent is alive
    (run / "snapshots").mkdir()
    for p in stale + [live]:
        p.write_bytes(b"half")
    keep = run / "notes.tmp-readme"  # not one of ours: no pid-counter tail
    keep.write_text("x")
    removed = atomic.clean_stale_temps(run)
    assert sorted(removed) == sorted(stale)
    assert live.exists() and keep.exists() and (run / "steps" / "chunk-00000000.parquet").exists()
    assert not any(p.exists() for p in stale)
