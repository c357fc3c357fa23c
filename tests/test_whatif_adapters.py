"""The adapters' runs replay too: a Hugging Face Trainer run of a tiny GPT-2 (the recipe of
tests/test_integrations_hf.py: AdamW in two param groups, gradient clipping at 1.0, a poisoned
micro-batch at step 40) reproduces from its snapshot, and skipping the poisoned batch removes
the spike."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
sys.path.insert(0, str(Path(__file__).parent))

from test_integrations_hf import _train  # noqa: E402

from forensics.rundir.reader import open_run  # noqa: E402
from forensics.whatif import whatif  # noqa: E402


def test_hf_trainer_run_replays(tmp_path):
    onset = 40
    _train(tmp_path, tmp_path / "hf", steps=46, poison={onset})
    run = open_run(tmp_path / "hf")
    assert run.manifest["optimizer"]["class"].startswith("torch.optim")
    result = whatif(run, 0, [f"skip_batch={onset}", "lr=x0.5"])
    assert result.reproduced, result.diagnosis
    assert result.replay_error <= 1e-4
    skip = result.changes[0]
    assert skip.recorded_peak_ratio > 1.5 and skip.spike_gone
