"""The mechanism specs are complete, each rule reads only what its engines declare, no other
module names a mechanism, and docs/analysis.md is what the specs say."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from forensics.analyzer import plots
from forensics.analyzer.doc_tables import render
from forensics.analyzer.evidence import Evidence, SpikeContext, UndeclaredMetric
from forensics.analyzer.measure import METRICS
from forensics.analyzer.mechanisms import MECHANISMS, engines_for
from forensics.analyzer.rules import SPECS, discover
from forensics.analyzer.spec import Mechanism, Threshold, Thresholds

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "forensics"
RULES_DIR = PACKAGE / "analyzer" / "rules"
ALL_METRICS = {m for metrics in METRICS.values() for m in metrics}


def _strings(path: Path) -> set[str]:
    """Every string constant of a module (docstrings included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _code_strings(path: Path, skip_keywords=("panel", "needs"), keys: bool = False) -> set[str]:
    """String constants a module's code uses, leaving out docstrings, the given keyword
    arguments of calls (a spec's `panel` is drawn by the app, its `needs` names engines) and,
    unless `keys`, dict keys and subscripts (the names of reported evidence fields)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skip.add(id(node.value))
        elif isinstance(node, ast.Dict) and not keys:
            skip |= {id(k) for k in node.keys if k is not None}
        elif isinstance(node, ast.Subscript) and not keys:
            skip.add(id(node.slice))
        elif isinstance(node, ast.keyword) and node.arg in skip_keywords:
            skip |= {id(n) for n in ast.walk(node.value)}
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip}


def _reads(path: Path) -> set[str]:
    """String constants passed as the metric of an evidence read: `x.at/series/has("m", ...)`
    or a series helper `first/last/peak_value/window(ev, "m", ...)`."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        index = 0 if name in ("at", "series", "has") and isinstance(func, ast.Attribute) else (
            1 if name in ("first", "last", "peak_value", "window") else None)
        if index is not None and len(node.args) > index and isinstance(node.args[index], ast.Constant):
            out.add(node.args[index].value)
    return out


def _toy_spec(**changes) -> Mechanism:
    fields = dict(name="toy", role="ascent", needs=("data",), judge=lambda ev: None,
                  summary="fires on toys", hint="", thresholds=Thresholds(k=(1.0, "rationale: toy")),
                  badge="red", colour="#123456", precedence=5,
                  panel=(plots.Lines("toy", {"batch_loss": "loss"}),))
    fields.update(changes)
    return Mechanism(**fields)


def test_every_spec_is_complete_and_named_after_its_file():
    assert set(SPECS) == {p.stem for p in RULES_DIR.glob("*.py") if not p.stem.startswith("_")}
    for name, spec in SPECS.items():
        assert spec.panel, name
        assert all(t.source.strip() for t in spec.thresholds.values()), name
        assert set(spec.needs) <= set(METRICS), (name, spec.needs)
        undeclared = plots.metrics_of(spec.panel) - ALL_METRICS
        assert not undeclared, (name, "panel draws undeclared metrics", undeclared)
        assert spec.hint, name


@pytest.mark.parametrize("change, words", [
    ({"panel": ()}, "panel is empty"),
    ({"role": "cause"}, "role"),
    ({"precedence": None}, "precedence"),
    ({"role": "descent"}, "precedence"),
    ({"badge": "pink"}, "badge"),
    ({"colour": "red"}, "colour"),
    ({"needs": ()}, "needs"),
    ({"tie_break": lambda ev: True}, "tie_break_note"),
])
def test_an_incomplete_spec_is_refused(change, words):
    _toy_spec()  # the control: complete
    with pytest.raises(ValueError, match=words):
        _toy_spec(**change)


def test_a_threshold_without_its_source_is_refused():
    assert Thresholds(k=(1.0, "rationale: x")).k == 1.0
    with pytest.raises(ValueError, match="'k'.*no source"):
        Thresholds(k=(1.0, " "))
    with pytest.raises(ValueError, match="no source"):
        Threshold(2.0, "")
    with pytest.raises(AttributeError, match="declared: k"):
        _ = Thresholds(k=(1.0, "rationale: x")).kk


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_rule_names_only_metrics_its_engines_declare(name):
    """Static: any metric name written in the rule file (read by the judge, the tie-break or
    the evidence it reports) is declared by one of the engines the spec needs."""
    spec = SPECS[name]
    allowed = {m for e in spec.needs for m in METRICS[e]}
    path = RULES_DIR / f"{name}.py"
    named = (_code_strings(path) | _reads(path)) & ALL_METRICS
    assert named, name  # the scan sees the rule's reads
    assert named <= allowed, (name, "reads metrics of engines it does not need", named - allowed)


def test_the_verdict_and_the_pipeline_read_no_metric():
    """The verdict used to read `batches_identical` itself; now only specs read metrics."""
    for module in ("verdict.py", "pipeline.py", "mechanisms.py", "spec.py", "doc_tables.py"):
        assert not _reads(PACKAGE / "analyzer" / module), module


def test_a_subset_of_rules_runs_every_engine_its_specs_need():
    for name, spec in SPECS.items():
        assert set(spec.needs) <= set(engines_for([name])), name
    assert "data" in engines_for(["sharpness", "catapult"])  # the catapult tie-break's engine
    assert engines_for(MECHANISMS) == tuple(dict.fromkeys(e for s in SPECS.values() for e in s.needs))


def test_undeclared_metrics_are_refused_when_written_and_when_read():
    ctx = SpikeContext(run_id="r", spike_id=0, onset=1, peak=2, end=3, peak_loss=2.0,
                       baseline_loss=1.0, optimizer="sgd")
    ev = Evidence(ctx, catalog=METRICS)
    ev.add(1, "data", "batch_loss", 2.0)
    with pytest.raises(UndeclaredMetric, match="batch_lost"):
        ev.add(1, "data", "batch_lost", 2.0)
    with pytest.raises(UndeclaredMetric, match="no engine named"):
        ev.view(("datum",))
    view = ev.view(("curvature",))
    with pytest.raises(UndeclaredMetric, match="batch_loss"):
        view.at("batch_loss", 1)
    assert view.at("lambda_max", 1) is None  # declared, not measured
    assert ev.view(("data",)).at("batch_loss", 1) == 2.0


def test_no_module_but_its_rule_file_names_a_mechanism():
    """A mechanism's name, as a whole string or a def, is written only in its rule file (and
    in the engine file of the same name, whose own name it is). forensics/demo/ records the
    sample runs, whose folder names and planted causes (`task.mechanism`) are data about them."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "demo":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        words = _code_strings(path, skip_keywords=("needs",), keys=True)
        words |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        for name in set(SPECS) & words:
            own = rel == Path("analyzer", "rules", f"{name}.py")
            engine = rel == Path("analyzer", "measure", f"{name}.py")
            if not (own or engine):
                offenders.append((str(rel), name))
    assert not offenders, offenders


def test_docs_tables_are_generated_from_the_specs():
    doc = ROOT / "docs" / "analysis.md"
    text = doc.read_text(encoding="utf-8")
    assert render(text) == text, "run: python -m forensics.analyzer.doc_tables docs/analysis.md"
    for name, spec in SPECS.items():
        assert f"| `{name}` | {spec.role} |" in text
        for threshold in spec.thresholds:
            assert f"`{threshold}`" in text, (name, threshold)
    for engine, metrics in METRICS.items():
        for metric in metrics:
            assert f"`{metric}`" in text, (engine, metric)


def test_render_refuses_a_block_it_does_not_know():
    with pytest.raises(ValueError, match="no generator"):
        render("<!-- begin generated: nope -->\n<!-- end generated: nope -->")


def test_a_mechanism_is_one_file(tmp_path, monkeypatch):
    """Discovery: a package of rule files is a registry; a file whose SPEC has another name,
    or no SPEC, is refused with its path."""
    pkg = tmp_path / "toyrules"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "plateau.py").write_text(
        "from forensics.analyzer.plots import Lines\n"
        "from forensics.analyzer.spec import Mechanism, Thresholds\n"
        "SPEC = Mechanism(name='plateau', role='aftermath', needs=('data',), judge=print,\n"
        "                 summary='s', hint='h', thresholds=Thresholds(), badge='gray',\n"
        "                 colour='#000000', panel=(Lines('t', {'batch_loss': 'l'}),))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    specs = discover("toyrules", [str(pkg)])
    assert list(specs) == ["plateau"] and specs["plateau"].needs == ("data",)
    (pkg / "other.py").write_text("from toyrules.plateau import SPEC\n")
    with pytest.raises(ValueError, match="other.py.*file's name"):
        discover("toyrules", [str(pkg)])
    (pkg / "other.py").write_text("X = 1\n")
    sys.modules.pop("toyrules.other", None)
    importlib.invalidate_caches()
    with pytest.raises(TypeError, match="other.py"):
        discover("toyrules", [str(pkg)])


def test_the_app_takes_badges_colours_and_panels_from_the_specs():
    pytest.importorskip("streamlit")
    from forensics.app import charts, ui

    for name, spec in SPECS.items():
        assert ui.BADGE[name] == spec.badge and charts.VERDICT_COLORS[name] == spec.colour
    app_dir = PACKAGE / "app"
    for path in app_dir.rglob("*.py"):
        assert not _strings(path) & set(SPECS), path
