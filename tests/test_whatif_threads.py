"""whatif replays a CPU run with the thread count it was recorded with (run.json `torch_threads`):
the zoo GPT bad-batch run, recorded with one thread, drifted past the self-check's tolerance when
replayed with two (weights off by 1e-4 relative at the spike) and no counterfactual was claimed."""

import json

import pytest
import torch

from forensics.demo import gpt
from forensics.rundir.manifest import Manifest
from forensics.rundir.format import FORMAT, CorruptFileError
from forensics.whatif import whatif


def test_a_gpt_run_recorded_with_one_thread_reproduces_when_replayed_from_two(tmp_path):
    gpt.train_bad_batch(tmp_path)  # recorded under one intra-op thread (demo's deterministic())
    run = tmp_path / "gpt_bad_batch"
    assert json.loads((run / "run.json").read_text())["torch_threads"] == 1
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = whatif(run, 0, [f"skip_batch={gpt.BAD_STEP}"])
        assert torch.get_num_threads() == 2  # the process's count is given back
    finally:
        torch.set_num_threads(before)
    assert result.reproduced, result.diagnosis
    assert result.replay_error <= result.tolerance
    assert any("1 CPU thread" in n for n in result.notes)
    (change,) = result.changes
    assert change.spike_gone  # the planted batch skipped: no spike


def test_torch_threads_is_checked_in_run_json():
    base = {"format": FORMAT, "format_version": 1, "loss": "mse"}
    assert Manifest.from_dict({**base, "torch_threads": 4}).torch_threads == 4
    assert Manifest.from_dict(base).torch_threads is None  # runs recorded before the field
    with pytest.raises(CorruptFileError, match="torch_threads"):
        Manifest.from_dict({**base, "torch_threads": 0})
