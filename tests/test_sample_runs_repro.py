"""Sample runs are reproducible: re-running a trainer rebuilds its recorded tensors bit for bit."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open

from forensics.demo import TRAINERS, make_all
from forensics.rundir.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1] / "sample_runs"
VOLATILE_META = {"run_id", "sha256"}  # the digest covers the header, run_id included; absent in old files


def _tensors(run: Path) -> dict[str, tuple[dict, dict]]:
    out = {}
    for path in sorted((run / "snapshots").glob("step-*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            out[path.name] = ({k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata()))
    return out


def _bits(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor: bitwise equality, NaN payloads included (NaN != NaN otherwise)."""
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def _steps(run: Path) -> dict[str, list]:
    cols: dict[str, list] = {}
    for path in sorted((run / "steps").glob("chunk-*.parquet")):
        for k, v in pq.read_table(path).to_pydict().items():
            cols.setdefault(k, []).extend(v)
    cols.pop("wall_time", None)
    return cols


@pytest.mark.parametrize("name", ["eos", "bad_batch", "numerical", "gpt_bad_batch", "gpt_beta2_lag",
                                  "gpt_beta2_control"])
def test_rerunning_a_trainer_reproduces_its_tensors_bit_for_bit(name, tmp_path):
    committed = ROOT / name
    if not (committed / "run.json").exists():
        pytest.skip(f"sample run {name} not recorded")
    make_all(tmp_path, names=[name], log=lambda *_: None)
    fresh = tmp_path / name
    old, new = _tensors(committed), _tensors(fresh)
    assert old.keys() == new.keys()
    for file, (tensors, meta) in old.items():
        tensors2, meta2 = new[file]
        assert tensors.keys() == tensors2.keys()
        for key, t in tensors.items():
            assert _bits(t) == _bits(tensors2[key]), f"{file}:{key} differs"
        assert {k: v for k, v in meta.items() if k not in VOLATILE_META} == {
            k: v for k, v in meta2.items() if k not in VOLATILE_META}
    a, b = _steps(committed), _steps(fresh)
    assert a.keys() <= b.keys()  # a run recorded before columns were added (#16) lacks them
    for k in a:
        if k == "param_groups":  # JSON text
            assert a[k] == b[k]
            continue
        x, y = (np.array([np.nan if v is None else v for v in col], dtype=float) for col in (a[k], b[k]))
        assert x.tobytes() == y.tobytes(), k
    m1, m2 = (load_manifest(r).to_dict() for r in (committed, fresh))  # old runs: family derived
    for key in ("model", "loss", "optimizer", "params", "detector", "recorder", "task", "seed"):
        if key == "recorder":  # a run recorded before keys were added (#18: mode, sync_every, ...) lacks them
            assert m1[key] == {k: m2[key][k] for k in m1[key]}, key
            continue
        assert m1[key] == m2[key], key


def test_registry_knows_every_committed_run():
    recorded = {p.name for p in ROOT.iterdir() if (p / "run.json").exists()} if ROOT.exists() else set()
    assert recorded <= set(TRAINERS)


def test_make_all_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="unknown sample run"):
        make_all(tmp_path, names=["nope"])
