"""The run-directory contract: atomic writes, readers that fail clearly, and opening a run runs no code."""

import json
import sys

import pytest
import torch

from forensics.losses import resolve_loss
from forensics.rundir import atomic
from forensics.rundir.events import EventLog, read_events
from forensics.rundir.format import (
    CorruptFileError, MissingFileError, RunFormatError, UnsupportedVersionError, snapshot_name,
)
from forensics.rundir.manifest import read_manifest, write_manifest
from forensics.rundir.model import build_model
from forensics.rundir.reader import open_run
from forensics.rundir.snapshots import decode_meta, encode_meta, load_snapshot, save_snapshot
from forensics.rundir.steps import read_steps, write_chunk

MANIFEST = {"format": "spike-forensics-run", "format_version": 1, "run_id": "r", "params": [], "tied": {}}


def _run(tmp_path, manifest=None):
    d = tmp_path / "run"
    d.mkdir()
    write_manifest(d, manifest or MANIFEST)
    return d


def test_snapshot_roundtrip_and_golden_metadata(tmp_path):
    meta = {"step": 3, "loss": float("nan"), "role": "pre", "spike_id": None, "betas": [0.9, 0.999],
            "decoupled_weight_decay": True, "lr": 1e-3, "run_id": "007", "grad_clipped": "unknown"}
    assert encode_meta(meta) == {"step": "3", "loss": "nan", "role": "pre", "spike_id": "",
                                 "betas": "[0.9, 0.999]", "decoupled_weight_decay": "true", "lr": "0.001",
                                 "run_id": "007", "grad_clipped": "unknown"}
    back = decode_meta(encode_meta(meta))
    assert back["run_id"] == "007" and back["step"] == 3 and back["loss"] != back["loss"]
    assert back["spike_id"] is None and back["betas"] == [0.9, 0.999] and back["grad_clipped"] is None
    tensors = {"param/a.w": torch.arange(6.0).view(2, 3), "exp_avg/a.w": torch.ones(2, 3),
               "state/sum/a.w": torch.zeros(2, 3), "batch/x": torch.arange(4)}
    path = tmp_path / snapshot_name(3)
    assert path.name == "step-00000003.safetensors"
    save_snapshot(path, tensors, meta)
    snap = load_snapshot(path)
    assert torch.equal(snap.params["a.w"], tensors["param/a.w"])
    assert set(snap.state) == {"exp_avg", "sum"} and torch.equal(snap.batch["x"], torch.arange(4))
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    assert load_snapshot(path, include={"param"}).state == {}


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_snapshot_error_names_the_file(tmp_path, damage):
    path = tmp_path / "step-00000001.safetensors"
    save_snapshot(path, {"param/w": torch.randn(64, 64)}, {"step": 1})
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 100, "empty": b""}[damage])
    with pytest.raises(CorruptFileError, match="step-00000001.safetensors"):
        load_snapshot(path)


def test_missing_or_unparseable_manifest(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        open_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="run.json"):
        open_run(tmp_path / "empty")
    d = tmp_path / "bad"
    d.mkdir()
    (d / "run.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match=r"bad/run\.json"):
        open_run(d)
    (d / "run.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(RunFormatError, match="not a spike-forensics manifest"):
        open_run(d)
    assert issubclass(RunFormatError, ValueError)


def test_newer_format_version_is_refused(tmp_path):
    d = _run(tmp_path)
    (d / "run.json").write_text(json.dumps({**MANIFEST, "format_version": 2}))  # a newer writer
    with pytest.raises(UnsupportedVersionError, match=r"run\.json.*format_version 2.*\(1\)"):
        open_run(d)


def test_events_tolerate_a_torn_last_line(tmp_path):
    d = _run(tmp_path)
    log = EventLog(d)
    log.append("warning", step=1, message="a")
    log.append("spike", spike_id=0, onset=5, peak=6, end=None, peak_loss=float("inf"), baseline=1.0,
               magnitude=float("inf"), signal="loss", nonfinite=True)
    with open(d / "events.jsonl", "ab") as f:
        f.write(b'{"type": "snapshot", "st')  # killed mid-append
    events = read_events(d)
    assert [e["type"] for e in events] == ["warning", "spike"]
    (spike,) = open_run(d).spikes
    assert spike.end is None and spike.peak_loss == float("inf") and spike.nonfinite
    EventLog(d).append("close", step=9, wall_time=1.0)  # a new writer drops the torn tail
    assert [e["type"] for e in read_events(d)] == ["warning", "spike", "close"]
    (d / "events.jsonl").write_text('{"type": "a"}\ngarbage\n{"type": "b"}\n')
    with pytest.raises(CorruptFileError, match="line 2"):
        read_events(d)


def test_steps_chunks_union_sorted_and_temp_files_ignored(tmp_path):
    d = _run(tmp_path)
    write_chunk(d, 1, {"step": [3, 4], "loss": [0.3, float("nan")], "extra": [1, 2]})
    write_chunk(d, 0, {"step": [0, 1, 2], "loss": [1.0, 0.5, 0.4]})
    (d / "steps" / "chunk-00000002.parquet.tmp-1-0").write_bytes(b"half")
    table = read_steps(d)
    assert table.column("step").to_pylist() == [0, 1, 2, 3, 4]
    assert table.column("update_norm").null_count == 5
    assert str(table.schema.field("spike_id").type) == "int32"
    assert open_run(d).steps.num_rows == 5


def test_atomic_write_failure_leaves_old_content_and_no_temp(tmp_path):
    path = tmp_path / "f.json"
    atomic.write_json(path, {"a": 1})

    def boom(tmp):
        tmp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic.write_with(path, boom)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_open_run_executes_no_code_and_build_model_needs_consent(tmp_path, monkeypatch):
    (tmp_path / "evil_factory_mod.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('PWNED').write_text('x')\n"
        "def make():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    man = {**MANIFEST, "model": {"factory": "evil_factory_mod:make", "kwargs": {}},
           "loss": "evil_factory_mod:make"}
    d = _run(tmp_path, man)
    save_snapshot(d / "snapshots" / snapshot_name(0), {"param/w": torch.ones(2)}, {"step": 0, "role": "baseline"})
    run = open_run(d)
    _ = run.manifest, run.steps, run.spikes, run.events, [s.load() for s in run.snapshots]
    assert run.snapshot(0).role == "baseline"
    with pytest.raises(PermissionError, match="allow_import=True"):
        build_model(run.manifest)
    with pytest.raises(PermissionError, match="allow_import=True"):
        resolve_loss(run.manifest["loss"])
    assert "evil_factory_mod" not in sys.modules and not (tmp_path / "PWNED").exists()
    assert build_model(run.manifest, allow_import=True) is None  # with consent it runs
    assert (tmp_path / "PWNED").exists()


def test_build_model_from_zoo_and_failing_factory():
    man = {"model": {"factory": "forensics.zoo.models:mlp", "kwargs": {"sizes": [2, 3, 1]}}}
    model = build_model(man)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(ValueError, match="failed"):
        build_model({"model": {"factory": "forensics.zoo.models:mlp", "kwargs": {"sizes": [2]}}})
    with pytest.raises(ValueError, match="no model factory"):
        build_model({"model": None})
    with pytest.raises(PermissionError, match="not one of the project's own trusted"):
        build_model({"model": {"factory": "forensics.zoo.models:nope", "kwargs": {}}})
    with pytest.raises(ValueError, match="has no"):
        build_model({"model": {"factory": "forensics.zoo.models:nope", "kwargs": {}}}, allow_import=True)


def test_resolve_loss():
    out, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [0.0]])
    assert float(resolve_loss("mse")(out, y)) == 5.0
    logits = torch.tensor([[0.0, 0.0]])
    assert float(resolve_loss("cross_entropy")(logits, torch.tensor([1]))) == pytest.approx(0.6931, abs=1e-4)
    with pytest.raises(ValueError, match="unknown loss"):
        resolve_loss("l1")


def test_snapshot_listing_includes_files_missing_from_the_log(tmp_path):
    d = _run(tmp_path)
    save_snapshot(d / "snapshots" / snapshot_name(7), {"param/w": torch.ones(2)},
                  {"step": 7, "role": "pre", "spike_id": 0})
    (d / "snapshots" / (snapshot_name(8) + ".tmp-1-2")).write_bytes(b"half")
    run = open_run(d)
    assert [(s.step, s.role, s.spike_id) for s in run.snapshots] == [(7, "pre", 0)]
    with pytest.raises(KeyError, match="step 8"):
        run.snapshot(8)
    assert read_manifest(d)["run_id"] == "r"
