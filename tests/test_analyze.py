"""The analyzer on the shipped sample runs: verdicts, oracle checks, bad input, re-runs.

Each sample run declares in run.json which mechanism it was built to show
(`task.mechanism`); the analyzer must name it. The numbers it reports are checked against
independent dense computations written here (full Hessian, full Jacobian NTK, g²/v̂ from the
stored moments), not against forensics.math.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from forensics.analyzer.pipeline import analyze
from forensics.analyzer.rules import SPECS
from forensics.rundir.model import build_model
from forensics.rundir.reader import open_run

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"
ASCENT = {name for name, spec in SPECS.items() if spec.is_verdict}


def sample_names():
    return sorted(p.name for p in SAMPLES.iterdir() if (p / "run.json").is_file())


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    """Every sample run copied to a temp folder and analyzed once (results written there)."""
    root = tmp_path_factory.mktemp("analyzed")
    out = {}
    for name in sample_names():
        dst = root / name
        shutil.copytree(SAMPLES / name, dst, ignore=shutil.ignore_patterns("analysis"))
        out[name] = analyze(dst)
    return out


def first_captured(result):
    """The first spike whose onset snapshot exists (later ones may be past the capture budget)."""
    for spike in result.spikes:
        if not any("not captured" in why for why in spike.evidence.skipped.values()):
            return spike
    raise AssertionError("no spike with a captured onset")


def test_every_spiking_sample_gets_the_verdict_it_was_built_for(analyzed):
    checked = 0
    for name, result in analyzed.items():
        task = open_run(SAMPLES / name).manifest.get("task") or {}
        mechanism = task.get("mechanism")
        if mechanism is None:
            continue
        if not result.spikes:  # the quiet twin of a comparison (large vs small batch)
            assert task.get("twin"), name
            continue
        spike = first_captured(result)
        findings = {f.rule: f for f in spike.findings}
        if mechanism in ASCENT:
            assert spike.verdict == mechanism, (name, spike.verdict, spike.verdict_message)
        else:  # descent/aftermath mechanisms are findings, never verdicts
            assert findings[mechanism].status == "fired", (name, findings[mechanism].message)
            assert spike.verdict in ASCENT
        assert findings[spike.verdict if mechanism in ASCENT else mechanism].fired
        checked += 1
    assert checked >= 6


def test_controls_have_no_spike_and_no_finding(analyzed):
    controls = [n for n in analyzed
                if (open_run(SAMPLES / n).manifest.get("task") or {}).get("mechanism") is None]
    assert len(controls) >= 3
    for name in controls:
        assert analyzed[name].spikes == [], name
        table = pq.read_table(analyzed[name].path / "findings.parquet")
        assert table.num_rows == 0


def _measured(result, spike_id, metric, step):
    for s in result.spikes:
        if s.context.spike_id == spike_id:
            return s.evidence.at(metric, step)
    return None


def test_sharpness_matches_the_dense_hessian_on_the_eos_run(analyzed):
    result = analyzed["eos"]
    spike = result.spikes[0]
    run = open_run(SAMPLES / "eos")
    snap = run.snapshot(spike.context.onset).load()
    model = build_model(run.manifest).double()
    names = list(snap.params)
    x, y = snap.batch["x"].double(), snap.batch["y"].double()

    def loss_of(*ps):
        out = torch.func.functional_call(model, dict(zip(names, ps)), (x,))
        return ((out - y.reshape(out.shape)) ** 2).mean()

    params = tuple(snap.params[n].double() for n in names)
    H = torch.autograd.functional.hessian(loss_of, params)
    n = [p.numel() for p in params]
    dense = torch.cat([torch.cat([H[i][j].reshape(n[i], n[j]) for j in range(len(n))], 1)
                       for i in range(len(n))], 0)
    lam = float(torch.linalg.eigvalsh(dense)[-1])
    measured = _measured(result, 0, "lambda_max", spike.context.onset)
    assert measured == pytest.approx(lam, rel=2e-3)
    lr = float(snap.meta["lr"])
    assert _measured(result, 0, "eta_lambda_max", spike.context.onset) == pytest.approx(lr * lam, rel=2e-3)


def test_ntk_matches_the_dense_jacobian_on_the_catapult_run(analyzed):
    result = analyzed["catapult"]
    onset = result.spikes[0].context.onset
    run = open_run(SAMPLES / "catapult")
    snap = run.snapshot(onset).load()
    model = build_model(run.manifest)
    names = list(snap.params)
    x = snap.batch["x"]

    def outputs(*ps):
        return torch.func.functional_call(model, dict(zip(names, ps)), (x,)).reshape(-1)

    jac = torch.autograd.functional.jacobian(outputs, tuple(snap.params[n] for n in names))
    J = torch.cat([j.reshape(x.shape[0], -1) for j in jac], dim=1).double()
    lam = float(torch.linalg.eigvalsh(J @ J.T)[-1])
    assert _measured(result, 0, "ntk_lambda_max", onset) == pytest.approx(lam, rel=1e-4)
    lr = float(snap.meta["lr"])
    assert _measured(result, 0, "lr_over_eta_crit", onset) == pytest.approx(lr * lam / x.shape[0], rel=1e-4)


def test_beta2_lag_ratio_matches_the_stored_moments(analyzed):
    result = analyzed["adam_beta2_lag"]
    spike = first_captured(result)
    run = open_run(SAMPLES / "adam_beta2_lag")
    step = spike.context.onset
    snap = run.snapshot(step).load()
    t = int(snap.meta["optimizer_step"])
    beta2 = json.loads(json.dumps(snap.meta["betas"]))[1]
    g = np.concatenate([snap.grads[n].double().numpy().ravel() for n in snap.params])
    v = np.concatenate([snap.exp_avg_sq[n].double().numpy().ravel() for n in snap.params])
    rho = g ** 2 / (v / (1 - beta2 ** t))
    assert _measured(result, spike.context.spike_id, "ratio_median", step) == pytest.approx(
        float(np.median(rho)), rel=1e-3)


def test_uncaptured_spikes_are_not_analyzed_with_the_budget_reason(analyzed):
    """A spike past the capture budget has no evidence: `not_analyzed` with the reason first,
    never `unexplained` (which reads as "nothing found")."""
    uncaptured = [s for r in analyzed.values() for s in r.spikes
                  if any("not captured" in why for why in s.evidence.skipped.values())]
    assert uncaptured, "the sample runs include spikes past their capture budget"
    from forensics.analyzer.measure import ENGINES
    from forensics.analyzer.rules import SPECS

    from_steps = {r for r, spec in SPECS.items()  # rules whose engines all read steps/ without snapshots
                  if all(getattr(ENGINES[e], "WITHOUT_SNAPSHOTS", False) for e in spec.needs)}
    for spike in uncaptured:
        assert spike.verdict == "not_analyzed" or spike.verdict in from_steps, spike.verdict
        if spike.verdict == "not_analyzed":
            assert "not captured" in spike.verdict_message.split(":")[1], spike.verdict_message
        statuses = {f.rule: f for f in spike.findings}
        assert statuses["data"].status == "inconclusive"
        assert "budget" in statuses["data"].reason


def _copy(name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(SAMPLES / name, dst, ignore=shutil.ignore_patterns("analysis"))
    return dst


def _edit_manifest(run_dir, **changes):
    path = run_dir / "run.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        target = manifest
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    path.write_text(json.dumps(manifest))


def test_a_run_without_snapshots_gives_inconclusive_findings(tmp_path):
    run_dir = _copy("eos", tmp_path)
    shutil.rmtree(run_dir / "snapshots")
    result = analyze(run_dir)
    spike = result.spikes[0]
    assert spike.verdict == "not_analyzed" and "not captured" in spike.verdict_message
    status = {f.rule: f.status for f in spike.findings}
    assert status["numerical"] == "not_fired"
    assert all(status[r] == "inconclusive" for r in ("sharpness", "catapult", "data"))
    assert pq.read_table(run_dir / "analysis" / "findings.parquet").num_rows == len(spike.findings)


def test_a_model_that_cannot_be_rebuilt_is_named_and_the_rest_still_runs(tmp_path):
    run_dir = _copy("bad_batch", tmp_path)
    _edit_manifest(run_dir, **{"model.factory": "not_a_module_anywhere:make"})
    result = analyze(run_dir)
    spike = result.spikes[0]
    sharp = next(f for f in spike.findings if f.rule == "sharpness")
    assert sharp.status == "inconclusive" and "allow_import" in sharp.reason
    numerical = next(f for f in spike.findings if f.rule == "numerical")
    assert numerical.status == "not_fired"
    result = analyze(run_dir, allow_import=True)
    sharp = next(f for f in result.spikes[0].findings if f.rule == "sharpness")
    assert sharp.status == "inconclusive" and "not_a_module_anywhere" in sharp.reason


def test_a_model_object_can_be_passed_directly(tmp_path):
    run_dir = _copy("bad_batch", tmp_path)
    manifest = json.loads((run_dir / "run.json").read_text())
    model = build_model(manifest)
    _edit_manifest(run_dir, **{"model.factory": "not_a_module_anywhere:make"})
    result = analyze(run_dir, model=model)
    assert result.spikes[0].verdict == "data"


def test_an_unknown_optimizer_makes_the_adam_rule_inconclusive(tmp_path):
    run_dir = _copy("bad_batch", tmp_path)
    _edit_manifest(run_dir, **{"optimizer.class": "somepkg.optim.Lion"})
    result = analyze(run_dir, mechanisms=["adam_beta2_lag", "data"])
    findings = {f.rule: f for f in result.spikes[0].findings}
    assert set(findings) == {"adam_beta2_lag", "data"}
    assert findings["adam_beta2_lag"].status == "inconclusive"
    assert findings["data"].fired


def test_analysis_is_rerunnable_with_identical_tables(tmp_path):
    run_dir = _copy("catapult", tmp_path)
    calls = []
    analyze(run_dir, progress=lambda *a: calls.append(a))
    first = {t: pq.read_table(run_dir / "analysis" / f"{t}.parquet")
             for t in ("spikes", "measurements", "findings")}
    analyze(run_dir)
    for name, table in first.items():
        assert pq.read_table(run_dir / "analysis" / f"{name}.parquet").equals(table), name
    assert {c[1] for c in calls} >= {"curvature", "ntk", "done"}
    meta = json.loads((run_dir / "analysis" / "meta.json").read_text())
    assert meta["settings"]["lanczos_tol"] == 1e-3 and meta["forensics_version"]


def test_a_subset_of_mechanisms_gives_the_same_verdict_on_a_minibatch_run(tmp_path, analyzed):
    """`--mechanisms sharpness,catapult` on minibatch SGD: both fire on small_batch's first
    spike and the batches decide (catapult). The batches are measured by the data engine,
    which the subset used to leave out, so the tie went to sharpness."""
    full = analyzed["small_batch"].spikes[0]
    fired = {f.rule for f in full.findings if f.fired}
    assert {"sharpness", "catapult"} <= fired and full.verdict == "catapult"
    subset = analyze(_copy("small_batch", tmp_path), mechanisms=["sharpness", "catapult"],
                     write=False).spikes[0]
    assert {f.rule for f in subset.findings} == {"sharpness", "catapult"}
    assert subset.verdict == full.verdict == "catapult", subset.verdict_message


def test_unknown_mechanism_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown mechanism"):
        analyze(SAMPLES / "eos", mechanisms=["sharpnes"], write=False)


def test_public_names_survive_importing_the_analyzer_package():
    """`forensics.analyze` stays the function after the analyzer package is imported (it used to be
    shadowed by the subpackage `forensics.analyze` after the first call), and `dir()` lists it."""
    import subprocess
    import sys

    code = ("import forensics, forensics.analyzer.pipeline, inspect\n"
            "a, b = forensics.analyze, forensics.analyze\n"
            "from forensics import analyze\n"
            "assert inspect.isfunction(a) and a is b is analyze, (a, b, analyze)\n"
            "assert {'Recorder', 'analyze', 'open_run', 'connect', 'whatif', 'RecorderConfig',\n"
            "        'RecorderWarning', 'RunFormatError'} <= set(dir(forensics))\n"
            "from forensics import RecorderConfig, RecorderWarning, RunFormatError\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
