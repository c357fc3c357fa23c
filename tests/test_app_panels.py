"""The spike page's panels are drawn from the specs' declared chart kinds (no Streamlit run:
the charts `panels` would show are captured)."""

from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("streamlit")

from forensics.analyzer import plots  # noqa: E402
from forensics.analyzer.evidence import Evidence, SpikeContext, UndeclaredMetric  # noqa: E402
from forensics.analyzer.rules import SPECS  # noqa: E402
from forensics.app import panels  # noqa: E402

SPIKE = {"onset_step": 10, "peak_step": 12, "end_step": 16}


def frames(rows, steps=None, run=None) -> panels.SpikeFrames:
    m = pd.DataFrame(rows, columns=["step", "metric", "value"]).assign(engine="x")
    return panels.SpikeFrames(root="", run=run or {"path": "", "beta2": 0.9}, spike=SPIKE, m=m,
                              steps=steps if steps is not None else pd.DataFrame({"step": []}),
                              snaps=pd.DataFrame({"step": []}))


@pytest.fixture
def shown(monkeypatch):
    charts = []
    monkeypatch.setattr(panels.ui, "show_chart", lambda chart, **kw: charts.append(chart))
    return charts


def _data(chart) -> list[pd.DataFrame]:
    layers = getattr(chart, "layer", None) or [chart]
    return [layer.data for layer in layers if isinstance(getattr(layer, "data", None), pd.DataFrame)]


def test_lines_limits_use_measured_values_and_skip_duplicates(shown):
    panel = (plots.Lines("t", {"a": "A"}, limits=(plots.Limit("2 (GD)", 2.0, "lim_gd"),
                                                  plots.Limit("{value:g} = 2+2β", metric="lim_mom"),
                                                  plots.Limit("absent", metric="nothing"))),)
    assert panels.draw(panel, frames([(10, "a", 1.0), (10, "lim_mom", 2.0)]))
    limits = next(d for d in _data(shown[-1]) if "limit" in d.columns)
    assert list(limits["limit"]) == ["2 (GD)"]  # 2+2β at β = 0 equals 2: drawn once
    panels.draw(panel, frames([(10, "a", 1.0), (10, "lim_mom", 3.8)]))
    limits = next(d for d in _data(shown[-1]) if "limit" in d.columns)
    assert list(limits["limit"]) == ["2 (GD)", "3.8 = 2+2β"]


def test_nothing_measured_draws_nothing(shown):
    for spec in SPECS.values():
        assert panels.draw(spec.panel, frames([])) is False, spec.name
    assert shown == []


def test_bars_fill_their_labels_from_measurements(shown):
    panel = (plots.Bars("b", {"x": "spike batch (step {onset})", "y": "median of {n:.0f}"}, "loss",
                        limits=(plots.Limit("3×", metric="y", scale=3.0),)),)
    assert not panels.draw(panel, frames([(10, "x", 2.0)]))  # y missing: no half picture
    assert panels.draw(panel, frames([(10, "x", 2.0), (10, "y", 0.5), (10, "n", 7.0)]))
    bars = next(d for d in _data(shown[-1]) if "loss" in d.columns)
    assert list(bars["what"]) == ["spike batch (step 10)", "median of 7"]
    limits = next(d for d in _data(shown[-1]) if "limit" in d.columns)
    assert list(limits["value"]) == [1.5]
    panels.draw(panel, frames([(10, "x", 2.0), (10, "y", 0.5)]))
    assert list(next(d for d in _data(shown[-1]) if "loss" in d.columns)["what"])[1] == "median of ?"


def test_a_heatmap_draws_a_declared_metric_family(shown):
    panel = (plots.Heatmap("max attention logit", "attn_max", "max |q·k|/√d", "layer·head", log=True),)
    rows = [(s, f"attn_max@L{l}H{h}", float(s * (l + 1) + h)) for s in (8, 10, 12)
            for l in range(2) for h in range(2)] + [(10, "other", 5.0)]
    assert panels.draw(panel, frames(rows))
    data = shown[-1].data
    assert set(data["row"]) == {"L0H0", "L0H1", "L1H0", "L1H1"} and len(data) == 12
    assert shown[-1].to_dict()["encoding"]["color"]["scale"]["type"] == "log"


def test_metric_families_are_declared_with_a_star():
    ctx = SpikeContext(run_id="r", spike_id=0, onset=1, peak=2, end=3, peak_loss=2.0,
                       baseline_loss=1.0, optimizer="adam")
    ev = Evidence(ctx, catalog={"attention": {"attn_max@*": ("1", "per layer and head")}})
    ev.add(1, "attention", "attn_max@L0H3", 4.0)
    with pytest.raises(UndeclaredMetric):
        ev.add(1, "attention", "attn_mean@L0H3", 4.0)
    assert ev.view(("attention",)).at("attn_max@L0H3", 1) == 4.0


def test_recorded_columns_and_marks_after_the_peak(shown):
    steps = pd.DataFrame({"step": [9, 10, 11], "adam_ratio_median": [0.5, 0.05, None]})
    panel = (plots.Lines("r", {"r": "snapshot"}, recorded={"adam_ratio_median": "per step"},
                         after_peak={"rec": "recovered"}),)
    assert panels.draw(panel, frames([(10, "r", 0.1), (12, "rec", 4.0)], steps=steps))
    data = pd.concat([d for d in _data(shown[-1]) if "series" in d.columns])
    assert {"snapshot", "per step"} <= set(data["series"])
    marks = next(d for d in _data(shown[-1]) if "mark" in d.columns).set_index("mark")["step"]
    assert marks["peak"] == 12 and marks["recovered (+4)"] == 16
