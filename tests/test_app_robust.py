"""The app against a bad run, a hostile link and a runaway query (issue #11), driven by AppTest;
and the command line `forensics app` builds."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import forensics.app.data as data  # noqa: E402
import forensics.cli as cli  # noqa: E402
from forensics.catalog import limits  # noqa: E402
from forensics.rundir.format import RunFormatError  # noqa: E402
from tests.test_app_fixtures import make_folder  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SLOW = "SELECT count(*) AS n FROM steps a, steps b, steps c, steps d"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    """adam_run is fine; control has `"optimizer": [1]` in run.json; live has `spike_id: "abc"`
    in every spike and snapshot event of events.jsonl."""
    root = make_folder(tmp_path_factory.mktemp("bad"))
    manifest = json.loads((root / "control" / "run.json").read_text())
    manifest["optimizer"] = [1]
    (root / "control" / "run.json").write_text(json.dumps(manifest))
    events = root / "live" / "events.jsonl"
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    for e in lines:
        if "spike_id" in e:
            e["spike_id"] = "abc"
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return root


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (limits.TIMEOUT_ENV, limits.MAX_ROWS_ENV, "FORENSICS_APP_ROOT"):
        monkeypatch.delenv(name, raising=False)
    data._catalog.clear()  # Streamlit's caches live as long as the process
    data._query.clear()


def start(monkeypatch, root, **params) -> AppTest:
    monkeypatch.setenv("FORENSICS_APP_ROOT", str(root))
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at, kind: str) -> list[str]:
    return [str(e.value) for e in getattr(at, kind)]


# --- the SQL box ----------------------------------------------------------------------------

def test_a_link_only_prefills_the_box_and_a_click_runs_it(folder, monkeypatch):
    ran = []
    real = data.run_query

    def spy(catalog, sql, *args, **kwargs):
        ran.append(sql)
        return real(catalog, sql, *args, **kwargs)

    monkeypatch.setattr(data, "run_query", spy, raising=False)
    link = "SELECT count(*) AS n FROM steps WHERE run_id = 'adam_run'"
    at = start(monkeypatch, folder, page="sql", sql=link)
    assert at.text_area(key="sql_text").value == link
    assert not at.dataframe and link not in ran  # nothing ran on page load
    assert any("Run" in t for t in texts(at, "info"))
    at.button(key="sql_run").click().run()
    assert link in ran and at.dataframe[0].value["n"].tolist() == [300]
    at.toggle(key="sql_log").set_value(True).run()  # a rerun keeps the result, without a click
    assert at.dataframe[0].value["n"].tolist() == [300]


def test_a_runaway_query_is_stopped_with_a_message(folder, monkeypatch):
    monkeypatch.setenv(limits.TIMEOUT_ENV, "1")
    at = start(monkeypatch, folder, page="sql")
    at.text_area(key="sql_text").set_value(SLOW)
    t0 = time.monotonic()
    at.button(key="sql_run").click().run()
    assert time.monotonic() - t0 < 10
    assert not at.exception and not at.dataframe
    assert any("query exceeded the time limit (1 s)" in t for t in texts(at, "error"))
    at.text_area(key="sql_text").set_value("SELECT count(*) AS n FROM runs")
    at.button(key="sql_run").click().run()  # the app still answers
    assert at.dataframe[0].value["n"].tolist() == [3]


def test_the_row_limit_is_stated_on_the_page(folder, monkeypatch):
    at = start(monkeypatch, folder, page="sql")
    at.text_area(key="sql_text").set_value("SELECT range AS i FROM range(10005)")
    at.button(key="sql_run").click().run()
    assert len(at.dataframe[0].value) == 10_000
    assert any("first 10,000 rows" in t for t in texts(at, "warning"))
    at.text_area(key="sql_text").set_value("SELECT range AS i FROM range(10000)")  # control
    at.button(key="sql_run").click().run()
    assert len(at.dataframe[0].value) == 10_000 and not at.warning


def test_the_row_limit_is_configurable(folder, monkeypatch):
    monkeypatch.setenv(limits.MAX_ROWS_ENV, "50")
    at = start(monkeypatch, folder, page="sql")
    at.text_area(key="sql_text").set_value("SELECT * FROM steps")
    at.button(key="sql_run").click().run()
    assert len(at.dataframe[0].value) == 50
    assert any("first 50 rows" in t for t in texts(at, "warning"))


def test_app_queries_do_not_wait_for_each_other(folder, monkeypatch):
    """A slow SQL-box query in one session must not hold up another session's page query."""
    monkeypatch.setenv(limits.TIMEOUT_ENV, "8")
    root = str(folder)
    done = {}

    def slow():
        try:
            data.run_user_sql(root, SLOW)
        except ValueError as e:
            done["slow"] = (time.monotonic(), str(e))

    thread = threading.Thread(target=slow)
    t0 = time.monotonic()
    thread.start()
    time.sleep(0.5)
    assert list(data.runs(root)["run_id"]) == ["adam_run", "control", "live"]
    quick = time.monotonic()
    assert thread.is_alive(), "the slow query should still be running"
    thread.join(20)
    assert quick - t0 < 5 and done["slow"][0] > quick and "time limit (8 s)" in done["slow"][1]


# --- one bad run ----------------------------------------------------------------------------

def test_a_bad_run_is_named_and_the_others_are_shown(bad_folder, monkeypatch):
    """run.json and events.jsonl are validated once, in the reader: both bad runs are skipped,
    each named with its file and field, and the good run is shown whole."""
    at = start(monkeypatch, bad_folder)
    warnings = "\n".join(texts(at, "warning"))
    assert "control" in warnings and "run.json" in warnings and "optimizer" in warnings
    assert "live" in warnings and "events.jsonl" in warnings and "spike_id" in warnings
    table = at.dataframe[0].value
    assert list(table["run_id"]) == ["adam_run"]
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="runs_run").set_value("adam_run").run()  # the good run is whole
    assert not at.exception and len(at.dataframe) >= 2


@pytest.mark.parametrize("page", ["spike", "compare", "sql"])
def test_other_pages_survive_a_bad_run(bad_folder, monkeypatch, page):
    at = start(monkeypatch, bad_folder, page=page, run="live")
    assert not at.exception


def test_a_run_error_from_the_reader_is_caught_per_run(folder, monkeypatch):
    """Should opening the folder raise a RunFormatError for one run, the app opens each run
    alone, leaves that one out and names it."""
    real = data.connect
    bad = (folder / "control").resolve()

    def connect(paths, **kw):
        listed = [Path(p).resolve() for p in (paths if isinstance(paths, list) else [paths])]
        if any(p == bad or bad.parent == p for p in listed):
            raise RunFormatError(bad / "events.jsonl", "line 3: spike_id is 'abc', not an integer")
        return real(paths, **kw)

    monkeypatch.setattr(data, "connect", connect)
    at = start(monkeypatch, folder)
    assert list(at.dataframe[0].value["run_id"]) == ["adam_run", "live"]
    assert any("control" in t and "events.jsonl" in t and "spike_id" in t
               for t in texts(at, "warning"))


# --- `forensics app` ------------------------------------------------------------------------

def test_forensics_app_turns_usage_statistics_off_and_hands_over_the_limits(folder, tmp_path,
                                                                             monkeypatch):
    script = tmp_path / "app.py"
    script.write_text("")
    monkeypatch.setattr(cli.queries, "find_app", lambda: script)
    monkeypatch.setattr(cli.queries.importlib.util, "find_spec", lambda name: object())
    seen = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: seen.append((cmd, dict(os.environ))) or 0)
    r = CliRunner().invoke(cli.app, ["app", str(folder), "--sql-timeout", "3",
                                     "--sql-max-rows", "500"])
    assert r.exit_code == 0, r.output
    cmd, env = seen[0]
    flags = cmd[:cmd.index("--")]
    i = flags.index("--browser.gatherUsageStats")
    assert flags[i + 1] == "false"
    assert env[limits.TIMEOUT_ENV] == "3.0" and env[limits.MAX_ROWS_ENV] == "500"
    r = CliRunner().invoke(cli.app, ["app", str(folder), "--sql-timeout", "-2"])
    assert r.exit_code == 2 and "--sql-timeout" in r.stderr
