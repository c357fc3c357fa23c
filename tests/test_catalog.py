"""The catalog: views across runs, typed empty tables and notes for missing files, skipped
broken runs, the read-only guard, and every example query of docs/sql.md."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from forensics.catalog.schema import VIEWS
from forensics.catalog.views import VIEW_NAMES, connect, query
from forensics.rundir.format import RunFormatError
from forensics.rundir.steps import write_chunk
from test_catalog_fixtures import make_catalog_runs

DOC = Path(__file__).resolve().parents[1] / "docs" / "sql.md"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return make_catalog_runs(tmp_path_factory.mktemp("catalog"))


@pytest.fixture()
def copy(runs, tmp_path) -> Path:
    """A private copy of the fixture runs, for tests that damage files."""
    return Path(shutil.copytree(runs, tmp_path / "runs"))


def rows(cat, sql, params=None):
    return query(cat, sql, params).to_pylist()


def test_sql_across_two_runs_returns_rows_from_both(runs):
    cat = connect([runs / "adam-a", runs / "sgd-b"])
    got = rows(cat, "SELECT run_id, count(*) AS n, max(step) AS last FROM steps GROUP BY 1 ORDER BY 1")
    assert got == [{"run_id": "adam-a", "n": 300, "last": 299}, {"run_id": "sgd-b", "n": 300, "last": 299}]
    joined = rows(cat, "SELECT DISTINCT s.run_id FROM spikes s JOIN steps st "
                       "ON st.run_id = s.run_id AND st.step = s.peak_step ORDER BY 1")
    assert [r["run_id"] for r in joined] == ["adam-a", "sgd-b"]


def test_folder_expands_to_its_runs_and_every_view_has_the_documented_schema(runs):
    cat = connect(runs)
    assert [r.run_id for r in cat.runs] == ["adam-a", "sgd-b", "sgd-c"]
    for view in VIEW_NAMES:
        described = rows(cat, f"DESCRIBE {view}")
        expected = [(c, t) for c, t, _ in VIEWS[view]]
        assert [(d["column_name"], d["column_type"]) for d in described][:len(expected)] == expected, view
    run = {r["run_id"]: r for r in rows(cat, "SELECT * FROM runs")}
    assert run["adam-a"]["optimizer_name"] == "Adam" and run["adam-a"]["beta2"] == 0.999
    assert run["sgd-b"]["lr"] == 0.012 and run["sgd-b"]["num_spikes"] == 2
    assert run["sgd-c"]["analyzed"] is False and run["adam-a"]["analyzed"] is True
    assert run["adam-a"]["num_steps"] == 300 and run["adam-a"]["num_snapshots"] == 7
    assert json.loads(run["adam-a"]["model_kwargs"]) == {"width": 8}


def test_connect_unpacks_to_connection_and_notes(runs):
    con, notes = connect(runs)
    assert con.sql("SELECT count(*) FROM runs").fetchall() == [(3,)]
    assert any("sgd-c" in n and "never analyzed" in n for n in notes)


def test_never_analyzed_run_shows_online_spikes_and_empty_analysis(runs):
    cat = connect(runs / "sgd-c")
    spikes = rows(cat, "SELECT * FROM spikes")
    assert len(spikes) == 1
    s = spikes[0]
    assert (s["source"], s["verdict"], s["onset_step"], s["peak_step"], s["end_step"]) == \
        ("online", None, 120, 121, 140)
    assert s["magnitude"] > 5
    assert rows(cat, "SELECT count(*) AS n FROM findings") == [{"n": 0}]
    assert rows(cat, "SELECT count(*) AS n FROM measurements") == [{"n": 0}]
    assert any("never analyzed" in n for n in cat.notes)


def test_run_with_only_run_json_opens_with_empty_typed_tables(copy):
    bare = copy / "bare"
    bare.mkdir()
    shutil.copy(copy / "sgd-c" / "run.json", bare / "run.json")
    manifest = json.loads((bare / "run.json").read_text())
    manifest["run_id"] = "bare"
    (bare / "run.json").write_text(json.dumps(manifest))
    cat = connect(bare)
    for view in VIEW_NAMES:
        n = rows(cat, f"SELECT count(*) AS n FROM {view}")[0]["n"]
        assert n == (1 if view == "runs" else 0), view
        described = rows(cat, f"DESCRIBE {view}")
        assert [d["column_name"] for d in described] == [c for c, _, _ in VIEWS[view]]
    text = " ".join(cat.notes)
    assert "no steps" in text and "no events.jsonl" in text and "never analyzed" in text


def test_open_spike_without_its_close_event_and_torn_last_line(copy):
    events = copy / "sgd-c" / "events.jsonl"
    events.write_text(events.read_text()
                      + json.dumps({"type": "spike_open", "spike_id": 7, "step": 290, "loss": "nan",
                                    "baseline": 0.5, "score": 9.0, "signal": "loss"}) + "\n"
                      + '{"type": "spike", "spike_id": 7, "ons')
    cat = connect(copy / "sgd-c")
    open_spike = rows(cat, "SELECT * FROM spikes WHERE spike_id = 7")
    assert len(open_spike) == 1 and open_spike[0]["end_step"] is None
    assert open_spike[0]["peak_step"] == 290 and open_spike[0]["peak_loss"] != open_spike[0]["peak_loss"]


def test_corrupt_runs_are_skipped_and_named_others_open(copy):
    (copy / "sgd-b" / "run.json").write_text("{not json")
    chunk = copy / "sgd-c" / "steps" / "chunk-00000001.parquet"
    chunk.write_bytes(chunk.read_bytes()[:100])
    cat = connect(copy)
    assert [r.run_id for r in cat.runs] == ["adam-a", "sgd-c"]  # one bad chunk skips only itself
    notes = " ".join(cat.notes)
    assert str(copy / "sgd-b" / "run.json") in notes
    assert str(chunk) in notes
    assert rows(cat, "SELECT DISTINCT run_id FROM steps ORDER BY 1") == [{"run_id": "adam-a"}, {"run_id": "sgd-c"}]
    assert rows(cat, "SELECT count(*) AS n, count(*) FILTER (step BETWEEN 128 AND 255) AS hole "
                     "FROM steps WHERE run_id = 'sgd-c'") == [{"n": 300 - 128, "hole": 0}]  # chunk 1 left out
    with pytest.raises(RunFormatError, match="run.json"):
        connect(copy / "sgd-b", strict=True)


def test_corrupt_analysis_file_skips_the_run(copy):
    (copy / "adam-a" / "analysis" / "findings.parquet").write_bytes(b"PAR1 garbage")
    cat = connect(copy)
    assert "adam-a" not in [r.run_id for r in cat.runs]
    assert any("findings.parquet" in n for n in cat.notes)


def test_newer_format_version_is_skipped_with_a_note(copy):
    manifest = json.loads((copy / "sgd-b" / "run.json").read_text())
    manifest["format_version"] = 99
    (copy / "sgd-b" / "run.json").write_text(json.dumps(manifest))
    cat = connect(copy)
    assert [r.run_id for r in cat.runs] == ["adam-a", "sgd-c"]
    assert any("format_version 99" in n for n in cat.notes)


def test_path_without_runs_is_a_note_or_an_error_in_strict_mode(tmp_path):
    cat = connect([tmp_path / "nope", tmp_path])
    assert len(cat.not_runs) == 2 and cat.runs == []
    assert rows(cat, "SELECT count(*) AS n FROM steps") == [{"n": 0}]
    with pytest.raises(ValueError, match="no such file"):
        connect(tmp_path / "nope", strict=True)


def test_duplicate_paths_open_once_and_colliding_ids_are_renamed(copy):
    shutil.copytree(copy / "adam-a", copy / "adam-copy")
    cat = connect([copy / "adam-a", copy / "adam-a", copy / "adam-copy"])
    assert [r.run_id for r in cat.runs] == ["adam-a", "adam-a~2"]
    assert rows(cat, "SELECT count(DISTINCT run_id) AS n FROM findings") == [{"n": 2}]


def test_live_run_new_chunk_shows_up_and_new_columns_are_kept(copy):
    cat = connect(copy / "sgd-c")
    write_chunk(copy / "sgd-c", 99, {"step": [300, 301], "loss": [0.1, 0.2], "my_metric": [1.0, 2.0]})
    assert rows(cat, "SELECT step FROM steps WHERE step >= 300 ORDER BY step") == [{"step": 300}, {"step": 301}]
    got = rows(connect(copy / "sgd-c"), "SELECT step, my_metric FROM steps WHERE step >= 299 ORDER BY step")
    assert got == [{"step": 299, "my_metric": None}, {"step": 300, "my_metric": 1.0},
                   {"step": 301, "my_metric": 2.0}]


@pytest.mark.parametrize("sql", [
    "INSERT INTO steps VALUES (1)", "UPDATE findings SET status = 'fired'", "DELETE FROM spikes",
    "CREATE TABLE t AS SELECT 1", "DROP VIEW steps", "ALTER VIEW steps RENAME TO s",
    "COPY (SELECT 1) TO 'out.csv'", "ATTACH 'x.db'", "SET threads = 1", "PRAGMA version",
    "INSTALL httpfs", "LOAD httpfs", "EXPORT DATABASE 'dump'", "CALL pragma_version()",
    "SELECT 1; SELECT 2", "EXPLAIN ANALYZE COPY (SELECT 1) TO 'out.csv'", "BEGIN TRANSACTION", "",
])
def test_writes_and_other_statements_are_refused(runs, sql):
    cat = connect(runs)
    with pytest.raises(ValueError, match="read-only|one statement|empty SQL"):
        query(cat, sql)
    assert rows(cat, "SELECT count(*) AS n FROM runs") == [{"n": 3}]


@pytest.mark.parametrize("sql", ["WITH a AS (SELECT 1 AS x) SELECT * FROM a", "DESCRIBE steps",
                                 "SHOW TABLES", "SUMMARIZE spikes", "EXPLAIN SELECT * FROM steps",
                                 "FROM runs SELECT run_id", "SELECT 1;"])
def test_read_only_statements_are_allowed(runs, sql):
    assert query(connect(runs), sql).num_rows >= 1


def test_sandbox_reads_only_the_runs_and_failed_sql_is_a_value_error(runs):
    cat = connect(runs)
    with pytest.raises(ValueError, match="read_csv\\(\\) is refused"):
        query(cat, "SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(ValueError, match="SQL failed.*nope"):
        query(cat, "SELECT nope FROM steps")
    assert rows(cat, "SELECT count(*) AS n FROM steps WHERE run_id = ?", ["sgd-b"]) == [{"n": 300}]


def _doc_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_docs_have_at_least_ten_examples():
    assert len(_doc_blocks()) >= 10


@pytest.mark.parametrize("index", range(len(_doc_blocks())))
def test_every_doc_example_runs_and_returns_rows(runs, index):
    sql = _doc_blocks()[index]
    assert query(connect(runs), sql).num_rows > 0, sql


def test_docs_list_every_column_of_every_view():
    text = DOC.read_text()
    for view, columns in VIEWS.items():
        section = text.split(f"### `{view}`", 1)[1].split("###", 1)[0]
        for column, sqltype, _ in columns:
            assert f"| `{column}` | {sqltype} |" in section, (view, column)
