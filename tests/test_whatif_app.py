"""The spike page's What if panel: stored replays drawn as overlaid curves with their sentences,
a hint when the spike was never replayed, and the diagnosis when it did not reproduce."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from tests.test_app import app, chart, text

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from forensics.analyzer.pipeline import analyze
    from forensics.whatif import store, whatif

    out = tmp_path_factory.mktemp("wi")
    for name in ("eos", "catapult"):
        shutil.copytree(SAMPLES / name, out / name)
        analyze(out / name, device="cpu", mechanisms=["sharpness"])
    store.save(out / "eos", whatif(out / "eos", 0, ["lr=x0.5", "clip=1.0"]))
    return out


def _open(root, monkeypatch, run):
    monkeypatch.setenv("FORENSICS_APP_ROOT", str(root))
    at = app(root, page="spike", run=run, spike="0")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_replayed_spike_shows_curves_and_sentences(root, monkeypatch):
    at = _open(root, monkeypatch, "eos")
    page = text(at)
    assert "### What if" in page
    assert "with lr ×0.5 the spike does not occur: peak ×0.939 instead of ×15.1" in page
    assert "with clipping at 1 the spike still occurs" in page
    _, data = chart(at, "counterfactual replay")
    series = set(data[0]["series"])
    assert series == {"recorded", "with lr=x0.5", "with clip=1"}
    recorded = data[0][data[0]["series"] == "recorded"]
    assert recorded["loss"].max() == pytest.approx(0.4868, rel=1e-3)  # the recorded peak, step 132
    assert len(recorded) == 24


def test_spike_never_replayed_gets_the_command(root, monkeypatch):
    at = _open(root, monkeypatch, "catapult")
    assert "not replayed: `forensics whatif" in text(at)
