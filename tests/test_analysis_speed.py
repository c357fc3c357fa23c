"""What makes one spike's analysis fast on a large model (bench/results/analysis_gpt.md), each
checked against a known answer: the non-finite count's fast path, exact ρ quantiles by
selection, the attention kernel per engine, and no plain-Hessian Lanczos on Adam runs unless
asked for (no rule reads it there)."""

import shutil
from pathlib import Path

import pytest
import torch

import forensics.analyzer.measure.curvature as curvature_engine
from forensics.analyzer.measure import ENGINES, attention_kernel
from forensics.analyzer.pipeline import Settings, analyze
from forensics.math.finite import nonfinite_count
from forensics.math.preconditioner import ratio_summary

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"


def test_nonfinite_count_known_answers():
    t = torch.randn(1000)
    assert nonfinite_count(t) == 0
    t[[3, 7, 9]] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    assert nonfinite_count(t) == 3
    # finite values whose sum overflows the dtype: the fast path cannot decide, the count does
    assert nonfinite_count(torch.full((10,), 3e38)) == 0
    assert nonfinite_count(torch.full((100,), 60000.0, dtype=torch.float16)) == 0
    half = torch.full((100,), 60000.0, dtype=torch.float16)
    half[5] = float("nan")
    assert nonfinite_count(half) == 1
    assert nonfinite_count(torch.arange(5)) == 0 and nonfinite_count(torch.empty(0)) == 0


def test_ratio_quantiles_are_exact_on_a_large_vector():
    # 3M + 1 coordinates (more than the 2M the former subsample kept): the exact quantiles
    n = 3_000_001
    rho = torch.arange(n, dtype=torch.float64)[torch.randperm(n, generator=torch.Generator().manual_seed(1))]
    rho[0] = float("nan")  # one NaN: dropped, the rest are 0..n-1 without one value
    s = ratio_summary(rho)
    finite = torch.sort(rho[torch.isfinite(rho)]).values
    for key, q in (("q10", 0.1), ("median", 0.5), ("q90", 0.9)):
        pos = q * (finite.numel() - 1)  # linear interpolation between order statistics
        lo = int(pos)
        exact = float(finite[lo] + (pos - lo) * (finite[lo + 1] - finite[lo]))
        assert s[key] == pytest.approx(exact, rel=1e-12, abs=1e-9), key
    assert s["nan_count"] == 1 and s["share_below_1"] == pytest.approx(1 / (n - 1))


def test_forward_only_engines_keep_the_default_attention_kernel():
    forward_only = {name for name, m in ENGINES.items() if getattr(m, "FORWARD_ONLY", False)}
    assert forward_only == {"data", "logits", "attention", "numerical"}
    with attention_kernel(ENGINES["data"]):
        assert torch.backends.cuda.flash_sdp_enabled()  # not restricted to the math kernel
    for name in ("adam", "curvature", "ntk", "frequency"):  # they differentiate through attention
        with attention_kernel(ENGINES[name]):
            assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()


@pytest.fixture(scope="module")
def adam_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("adam") / "run"
    shutil.copytree(SAMPLES / "adam_beta2_lag", d)
    shutil.rmtree(d / "analysis", ignore_errors=True)
    return d


def _lanczos_calls(monkeypatch):
    calls = []
    original = curvature_engine.lanczos
    monkeypatch.setattr(curvature_engine, "lanczos", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    return calls


def _metric(result, engine, metric):
    return [v for _, e, m, v in result.spikes[0].evidence.rows if e == engine and m == metric]


def test_adam_run_has_no_plain_lanczos_by_default(adam_run, monkeypatch):
    calls = _lanczos_calls(monkeypatch)
    mech = ["sharpness", "adam_beta2_lag"]
    default = analyze(adam_run, write=False, mechanisms=mech)
    assert not calls and not _metric(default, "curvature", "lambda_max")
    assert _metric(default, "curvature", "grad_curvature")  # the directional curvature stays
    assert "curvature" not in default.spikes[0].evidence.skipped
    assert _metric(default, "adam", "pre_lambda_max")
    asked = analyze(adam_run, write=False, mechanisms=mech, settings=Settings(adam_plain_lambda_max=True))
    assert calls and _metric(asked, "curvature", "lambda_max")
    # no rule reads it: the same findings either way
    assert [(f.rule, f.status) for f in default.spikes[0].findings] == \
        [(f.rule, f.status) for f in asked.spikes[0].findings]
    assert default.spikes[0].verdict == asked.spikes[0].verdict


def test_each_snapshot_file_is_read_once_per_spike(monkeypatch):
    import forensics.rundir.reader as reader

    opened = []
    original = reader.load_snapshot
    monkeypatch.setattr(reader, "load_snapshot",
                        lambda path, **kw: opened.append(Path(path).name) or original(path, **kw))
    run = reader.open_run(SAMPLES / "bad_batch")
    result = analyze(run, write=False)
    assert len(result.spikes) == 1 and result.spikes[0].verdict == "data"
    # the spike's Scene reads each file once, whichever engines use it; the run-level baselines
    # (analyze's last pass, outside any spike) read the baseline snapshots once more
    baselines = {i.path.name for i in run.snapshots if i.role == "baseline"}
    twice = {name for name in opened if opened.count(name) > 1}
    assert len(opened) > 10 and twice <= baselines
    assert all(opened.count(name) <= 2 for name in opened)
