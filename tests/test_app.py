"""The Streamlit app driven by AppTest: every page, deep links, widgets, chart data, read-only SQL."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from forensics.app import charts  # noqa: E402
from tests.test_app_fixtures import _loss, make_folder, write_steps  # noqa: E402

def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("runs"))


def app(root, **params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    return at


@pytest.fixture
def run_app(folder, monkeypatch):
    def _run(root=None, **params):
        monkeypatch.setenv("FORENSICS_APP_ROOT", str(root or folder))
        at = app(root or folder, **params)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at
    return _run


def specs(at) -> list[tuple[dict, list[pd.DataFrame]]]:
    """(Vega-Lite spec, its datasets as DataFrames) of every chart on the page."""
    out = []
    for el in at.get("vega_lite_chart"):
        data = [pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in el.proto.datasets]
        out.append((json.loads(el.proto.spec), data))
    return out


def chart(at, title_part: str):
    hits = [(s, d) for s, d in specs(at) if title_part in dumps(s.get("title", ""))
            or any(title_part in dumps(v.get("title", "")) for v in s.get("vconcat", []) + s.get("hconcat", []))]
    assert hits, f"no chart titled {title_part!r}: {[s.get('title') for s, _ in specs(at)]}"
    return hits[0]


def text(at) -> str:
    parts = [m.value for m in at.markdown] + [t.value for t in at.title] + [s.value for s in at.subheader]
    for kind in ("success", "info", "warning", "error", "caption"):
        parts += [e.value if hasattr(e, "value") else e.body for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


# --- Runs page ------------------------------------------------------------------------------

def test_runs_page_lists_runs_with_verdicts_and_marks_spikes(run_app):
    at = run_app()
    assert at.title[0].value == "Runs"
    table = at.dataframe[0].value
    assert set(table["run_id"]) == {"adam_run", "control", "live"}
    row = table.set_index("run_id").loc["adam_run"]
    assert row["spikes"] == 2 and "adam_beta2_lag ×1" in row["verdicts"] and "sharpness ×1" in row["verdicts"]
    spec, data = chart(at, "click a spike")
    assert [p["name"] for p in spec["params"]] == ["zoom"] or "zoom" in dumps(spec)
    spikes = next(d for d in data if "verdict" in d.columns and "peak_step" in d.columns)
    assert sorted(spikes["peak_step"]) == [104, 203]
    assert set(spikes["verdict"]) == {"adam_beta2_lag", "sharpness"}
    loss = next(d for d in data if "loss" in d.columns and "step" in d.columns and len(d) == 300)
    assert loss["step"].max() == 299


def test_runs_page_log_toggle_and_scalar_panels(run_app):
    at = run_app(page="runs", run="adam_run")
    spec, _ = chart(at, "click a spike")
    assert '"type": "log"' in dumps(spec["vconcat"][0])
    n_panels = len(spec["vconcat"])
    at.toggle(key="runs_log").set_value(False).run()
    spec, _ = chart(at, "click a spike")
    assert '"type": "log"' not in dumps(spec["vconcat"][0])
    at.multiselect(key="runs_scalars").set_value(["grad_norm"]).run()
    spec, _ = chart(at, "click a spike")
    assert len(spec["vconcat"]) == 3 < n_panels  # loss, ‖g‖, overview strip
    assert "‖g‖" in dumps(spec["vconcat"][1])


def test_runs_page_open_button_goes_to_spike(run_app):
    at = run_app(page="runs", run="adam_run")
    at.selectbox(key="runs_spike").set_value(1).run()
    at.button(key="runs_open").click().run()
    assert at.title[0].value == "adam_run · spike 1"
    assert at.query_params["page"] == "spike" and at.query_params["spike"] == "1"


def test_unanalyzed_run_shows_scalars_and_how_to_analyze(run_app):
    at = run_app(page="runs", run="live")
    assert "forensics analyze" in text(at)
    spec, data = chart(at, "click a spike")
    spikes = next(d for d in data if "verdict" in d.columns)
    assert list(spikes["verdict"]) == ["not analyzed"]


def test_empty_folder_says_what_to_do(run_app, tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    for page in ("runs", "spike", "compare"):
        at = run_app(root=empty, page=page)
        assert "forensics demo" in text(at)


def test_live_run_refresh_picks_up_new_steps(run_app, tmp_path):
    from tests.test_app_fixtures import make_run
    make_run(tmp_path, "live", num_steps=100, analyzed=False, chunk=64)
    at = run_app(root=tmp_path, page="runs", run="live")
    assert at.dataframe[0].value.set_index("run_id").loc["live", "steps"] == 100
    loss, spike_of = _loss(200, [(60, 62, 66)])
    write_steps(tmp_path / "live", 2, range(100, 200), loss, spike_of, 0.01)
    at.run()
    assert at.dataframe[0].value.set_index("run_id").loc["live", "steps"] == 200
    _, data = chart(at, "click a spike")
    assert max(d["step"].max() for d in data if "step" in d.columns and "loss" in d.columns) == 199


# --- Spike page -----------------------------------------------------------------------------

def test_deep_link_opens_the_right_spike(run_app):
    at = run_app(run="adam_run", spike="1")
    assert at.title[0].value == "adam_run · spike 1"
    assert at.selectbox(key="spike_sel").value == 1
    assert "VERDICT-1: sharpness" in text(at)
    at = run_app(run="adam_run", spike="0")
    assert "VERDICT-0: adam_beta2_lag" in text(at)
    assert [m.value for m in at.markdown if m.value.startswith("####")][0].startswith("#### adam_beta2_lag")


def test_spike_page_shows_findings_with_status_score_message_hint(run_app):
    at = run_app(run="adam_run", spike="0")
    body = text(at)
    for rule in ("adam_beta2_lag", "condensation", "sharpness", "catapult", "data", "numerical"):
        assert f"MSG {rule}" in body
    assert "HINT adam_beta2_lag" in body and "no NTK for Adam" in body
    assert "#### adam_beta2_lag  ·  primary verdict" in body
    assert any("fired" in m.value and "badge" in m.value for m in at.markdown)
    assert any(p.proto.value == 90 for p in at.get("progress"))


def test_spike_page_charts_carry_their_evidence(run_app):
    at = run_app(run="adam_run", spike="0")
    spec, data = chart(at, "preconditioned sharpness")
    assert '"type": "log"' in dumps(spec)
    limits = next(d for d in data if "limit" in d.columns)
    assert sorted(limits["value"]) == [2.0, 38.0]
    series = next(d for d in data if "series" in d.columns and "η·λ_max(P⁻¹H)" in set(d["series"]))
    pre = series[series["series"] == "η·λ_max(P⁻¹H)"].set_index("step")["value"]
    assert pre[98] == 30.0 and pre[104] == 40.0
    _, data = chart(at, "η·λ_max against its stability limit")
    assert any("limit" in d.columns and list(d["value"]) == [2.0] for d in data)
    _, data = chart(at, "PL_s vs PL_s^⊥")
    s = next(d for d in data if "series" in d.columns)
    assert set(s["series"]) == {"PL_s (top-s NTK directions)", "PL_s^⊥ (the rest)"}
    _, data = chart(at, "low- vs high-frequency error")
    marks = next(d for d in data if "mark" in d.columns).set_index("mark")["step"]
    assert marks["peak"] == 104 and marks["low recovered (+4)"] == 108
    _, data = chart(at, "v decays like β₂^t")
    s = next(d for d in data if "series" in d.columns)
    assert any("β₂ = 0.999" in x for x in s["series"])
    _, data = chart(at, "against its neighbours")
    bars = next(d for d in data if "loss at onset weights" in d.columns)
    assert list(bars["loss at onset weights"]) == [0.5, 0.45]
    _, data = chart(at, "g²/v̂: the gradient")
    assert any("series" in d.columns and "g²/v̂ median (per step)" in set(d["series"]) for d in data)


def test_condensation_heatmaps_from_snapshot_weights(run_app):
    at = run_app(run="adam_run", spike="0")
    spec, data = chart(at, "before: step 98")
    assert "after: step 110" in dumps(spec)
    before, after = [d for d in data if "cos" in d.columns][:2]
    assert len(before) == len(after) == 144
    assert after["cos"].abs().min() > 0.999  # every neuron along one direction after the spike
    assert before["cos"].abs().min() < 0.9


def test_spike_selectbox_changes_the_page_and_the_url(run_app):
    at = run_app(run="adam_run", spike="0")
    at.selectbox(key="spike_sel").set_value(1).run()
    assert at.title[0].value == "adam_run · spike 1"
    assert at.query_params["spike"] == "1"
    at.selectbox(key="spike_run").set_value("live").run()
    assert at.title[0].value == "live · spike 0"
    assert "forensics analyze" in text(at)


def test_unknown_spike_in_link_is_reported(run_app):
    at = run_app(run="adam_run", spike="7")
    assert any("no spike `7`" in e.value for e in at.error)
    assert at.title[0].value == "adam_run · spike 0"


# --- Compare and SQL ------------------------------------------------------------------------

def test_compare_page_puts_two_runs_side_by_side(run_app):
    at = run_app(page="compare")  # defaults: the first run's first spike against the control
    assert at.selectbox(key="cmp_run_A").value == "adam_run"
    assert at.selectbox(key="cmp_run_B").value == "control"
    _, data = chart(at, "A against B")
    who = set(next(d for d in data if "who" in d.columns)["who"])
    assert who == {"A: adam_run · spike 0", "B: control"}
    assert "VERDICT-0" in text(at)
    at.selectbox(key="cmp_metric").set_value("grad_norm").run()
    spec, data = chart(at, "A against B")
    assert "‖g‖: A against B" in dumps(spec["title"])
    assert "grad_norm" in next(d for d in data if "who" in d.columns).columns


def test_sql_page_runs_selects_and_charts_step_columns(run_app):
    at = run_app(page="sql")
    at.button(key="sql_run").click().run()  # nothing runs before a click
    assert at.dataframe[0].value["rule"].tolist()  # the example query over findings
    at.text_area(key="sql_text").set_value(
        "SELECT run_id, step, loss FROM steps WHERE run_id = 'adam_run' ORDER BY step")
    at.button(key="sql_run").click().run()
    assert len(at.dataframe[0].value) == 300
    _, data = chart(at, "result against step")
    assert set(next(d for d in data if "series" in d.columns)["series"]) == {"adam_run · loss"}


def test_sql_page_refuses_writes(run_app):
    at = run_app(page="sql")
    for sql in ("DROP VIEW steps", "INSERT INTO findings SELECT * FROM findings",
                "COPY steps TO '/tmp/x.csv'", "SELECT 1; DROP VIEW runs"):
        at.text_area(key="sql_text").set_value(sql)
        at.button(key="sql_run").click().run()
        assert at.error and at.error[0].value.startswith("Refused:"), sql
        assert "read-only" in at.error[0].value or "one statement" in at.error[0].value
        assert not at.dataframe
    at.text_area(key="sql_text").set_value("SELECT count(*) AS n FROM steps")
    at.button(key="sql_run").click().run()
    assert at.dataframe[0].value["n"][0] == 700  # the views are still there


# --- pure chart functions -------------------------------------------------------------------

def test_thin_keeps_spike_extremes():
    df = pd.DataFrame({"step": range(100_000), "loss": [1.0] * 100_000})
    df.loc[54_321, "loss"] = 50.0
    out = charts.thin(df, "loss", max_points=1000)
    assert len(out) <= 1100 and out["loss"].max() == 50.0


def test_sql_chart_only_with_a_step_column():
    assert charts.sql_chart(pd.DataFrame({"a": [1, 2]})) is None
    c = charts.sql_chart(pd.DataFrame({"step": [1, 2], "loss": [0.5, float("inf")]}))
    assert c is not None and c.to_dict()["mark"]["type"] == "line"


def test_compare_page_table_puts_every_run_side_by_side(tmp_path, run_app):
    """Seed 001's table from recorded runs: small vs large batch, spikes, AGOP alignment, loss."""
    import shutil

    from forensics.analyzer.pipeline import analyze

    samples = Path(APP).parent / "sample_runs"
    if not (samples / "small_batch" / "run.json").is_file():
        pytest.skip("no sample runs")
    for name in ("small_batch", "large_batch"):
        shutil.copytree(samples / name, tmp_path / name, ignore=shutil.ignore_patterns("analysis"))
        analyze(tmp_path / name, mechanisms=["numerical"])
    at = run_app(root=tmp_path, page="compare")
    table = next(d.value for d in at.dataframe if "AGOP alignment (true AGOP)" in d.value.columns)
    rows = table.set_index("run_id")
    small, large = rows.loc["small_batch"], rows.loc["large_batch"]
    assert small["batch size"] < large["batch size"]
    assert small["spikes"] > large["spikes"]
    assert small["AGOP alignment (true AGOP)"] > large["AGOP alignment (true AGOP)"] > 0
    assert small["final loss"] == small["final loss"] and large["final loss"] == large["final loss"]


def test_a_not_analyzed_spike_is_shown_as_a_failure(tmp_path, run_app):
    """The reason in an error box with the not_analyzed badge, never a success box."""
    import shutil

    from forensics.analyzer.pipeline import analyze

    samples = Path(APP).parent / "sample_runs"
    if not (samples / "bad_batch" / "run.json").is_file():
        pytest.skip("no sample runs")
    dst = tmp_path / "bad_batch"
    shutil.copytree(samples / "bad_batch", dst, ignore=shutil.ignore_patterns("analysis"))
    manifest = json.loads((dst / "run.json").read_text())
    manifest["model"]["factory"] = "not_a_module_anywhere:make"
    (dst / "run.json").write_text(json.dumps(manifest))
    assert analyze(dst).spikes[0].verdict == "not_analyzed"
    at = run_app(root=tmp_path, run="bad_batch", spike="0")
    assert any("model not rebuilt" in e.value for e in at.error)
    assert not any("model not rebuilt" in s.value for s in at.success)
