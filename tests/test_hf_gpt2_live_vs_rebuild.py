"""A tiny GPT-2 (from a config, no download) through the HF callback with a planted bad batch: the
live model and the rebuild from run.json (no allow_import) give the same verdict, `data`."""

import math

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from forensics.analyzer.pipeline import Settings, analyze  # noqa: E402
from test_integrations_hf import _train  # noqa: E402  (tests/ is on sys.path: no __init__.py)

ONSET, STEPS = 40, 46


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    trainer = _train(tmp, tmp / "run", steps=STEPS, poison={ONSET})
    return tmp / "run", trainer.model


def _curvature(spike):
    # AdamW: the Hessian through attention is read as λ_max(P⁻¹H) (adam engine); the plain λ_max,
    # which no rule reads on an Adam run, is not measured by default
    return [v for _, e, m, v in spike.evidence.rows if e == "adam" and m == "pre_lambda_max"]


def test_live_model_and_rebuild_agree(trained):
    run_dir, model = trained
    settings = Settings(max_snapshots=4)
    live = analyze(run_dir, model=model, write=False, settings=settings)
    rebuilt = analyze(run_dir, write=False, settings=settings)  # trusted factory and loss
    assert [s.context.onset for s in live.spikes] == [s.context.onset for s in rebuilt.spikes] == [ONSET]
    assert live.spikes[0].verdict == rebuilt.spikes[0].verdict == "data"
    for result in (live, rebuilt):
        lam = _curvature(result.spikes[0])
        assert lam and all(math.isfinite(v) for v in lam)
        assert "curvature" not in result.spikes[0].evidence.skipped
    # the same weights and batches: the same curvature whichever way the model came
    assert _curvature(live.spikes[0]) == pytest.approx(_curvature(rebuilt.spikes[0]), rel=1e-2)
