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

from test_integrations_hf import _train

from forensics.rundir.reader import open_run
from forensics.whatif import whatif


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


def test_lightning_runs_replay(tmp_path):
    """Lightning (Adam): a plain fit, and one with gradient accumulation (2 micro-batches per step,
    recorded together) and clipping at 0.5 (the recorded clip threshold is inferred)."""
    pytest.importorskip("lightning.pytorch")
    from test_integrations_lightning import FACTORY, REC, Regressor, _batches, _fit

    from forensics.integrations.lightning import SpikeForensicsCallback

    _fit(Regressor(), _batches(100, poison={70}), SpikeForensicsCallback(tmp_path / "pl", **FACTORY, **REC))
    result = whatif(tmp_path / "pl", 0, ["skip_batch=70", "lr=x0.5"])
    assert result.reproduced and result.replay_error <= 1e-4, result.diagnosis
    skip, half = result.changes
    assert skip.spike_gone and not half.spike_gone

    cb = SpikeForensicsCallback(tmp_path / "acc", **FACTORY, **REC)
    _fit(Regressor(), _batches(120, poison={80}), cb, accumulate_grad_batches=2, gradient_clip_val=0.5)
    result = whatif(tmp_path / "acc", 0, ["skip_batch=40"])
    assert result.reproduced and result.replay_error <= 1e-4, result.diagnosis
    assert any("max-norm 0.5" in n for n in result.notes)
    assert result.changes[0].spike_gone
