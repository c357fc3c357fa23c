"""The loss defines the curvature: η_crit = 2/λ_max(JᵀH_outJ) from the loss by autograd.

Oracles are derived by hand for a linear model F = XW (c outputs, no bias), so K = I_c ⊗ XXᵀ
and λ_max(K) = λ_max(XᵀX) =: λ:
  torch's mean MSE over N = n·c entries, H_out = 2I/N  -> η_crit = N/λ
  half-MSE (1/2N)Σr²,                  H_out = I/N   -> η_crit = 2N/λ
  summed MSE Σr²,                       H_out = 2I    -> η_crit = 1/λ
  mean cross-entropy at W = 0 (p uniform), H_i = (I − 11ᵀ/c)/(n·c) -> η_crit = 2nc/λ.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from forensics.analyzer.pipeline import analyze
from forensics.math.gauss_newton import GaussNewtonOperator, loss_residual
from forensics.math.lanczos import lanczos

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"
n, d, c = 20, 5, 3


def _setup(zero=False):
    torch.manual_seed(0)
    X = torch.randn(n, d, dtype=torch.float64)
    Y = torch.randn(n, c, dtype=torch.float64)
    labels = torch.randint(0, c, (n,))
    m = torch.nn.Linear(d, c, bias=False).double()
    if zero:
        with torch.no_grad():
            m.weight.zero_()
    params = {k: v.detach() for k, v in m.named_parameters()}
    lam = float(torch.linalg.eigvalsh(X.T @ X)[-1])
    return m, params, X, Y, labels, lam


def _eta_crit(m, params, X, loss):
    op = GaussNewtonOperator(lambda p, x: functional_call(m, p, (x,)), params, X, loss)
    return 2.0 / float(lanczos(op, k=1, tol=1e-10, max_iter=60).eigenvalues[0])


@pytest.mark.parametrize("form", ["mean_mse", "half_mse", "sum_mse", "cross_entropy"])
def test_eta_crit_matches_the_hand_derived_value_for_each_loss_form(form):
    m, params, X, Y, labels, lam = _setup(zero=form == "cross_entropy")
    N = n * c
    loss, expected = {
        "mean_mse": (lambda o: F.mse_loss(o, Y), N / lam),
        "half_mse": (lambda o: 0.5 * ((o - Y) ** 2).mean(), 2 * N / lam),
        "sum_mse": (lambda o: ((o - Y) ** 2).sum(), 1 / lam),
        "cross_entropy": (lambda o: F.cross_entropy(o, labels), 2 * n * c / lam),
    }[form]
    assert _eta_crit(m, params, X, loss) == pytest.approx(expected, rel=1e-8)


def test_the_residual_is_the_loss_gradient():
    m, params, X, Y, labels, _ = _setup()
    out = functional_call(m, params, (X,))
    half = loss_residual(lambda o: ((o - Y) ** 2).sum() / (2 * n), out)
    assert torch.allclose(n * half, out - Y)
    ce = loss_residual(lambda o: F.cross_entropy(o, labels), out)
    assert torch.allclose(n * ce, out.softmax(-1) - F.one_hot(labels, c).double())


def half_mse(out, y):
    return 0.5 * ((out - y.reshape(out.shape)) ** 2).mean()


def sum_mse(out, y):
    return ((out - y.reshape(out.shape)) ** 2).sum()


@pytest.mark.skipif(not (SAMPLES / "catapult" / "run.json").is_file(), reason="no sample runs")
def test_the_ntk_engine_uses_the_runs_own_loss(tmp_path):
    """The same recorded catapult run judged under three loss forms: η_crit scales exactly as
    derived (half-MSE ×2, summed MSE ÷N against torch's mean MSE), so η/η_crit follows."""
    dst = tmp_path / "catapult"
    shutil.copytree(SAMPLES / "catapult", dst, ignore=shutil.ignore_patterns("analysis"))
    crit = {}
    for name, fn in (("mse", None), ("half", half_mse), ("sum", sum_mse)):
        res = analyze(dst, mechanisms=["catapult"], loss_fn=fn, write=False).spikes[0]
        onset = res.context.onset
        crit[name] = res.evidence.at("eta_crit", onset)
        entries = res.evidence.at("ntk_n", onset)
    assert crit["half"] == pytest.approx(2 * crit["mse"], rel=2e-3)
    assert crit["sum"] == pytest.approx(crit["mse"] / entries, rel=2e-3)


@pytest.mark.skipif(not (SAMPLES / "low_frequency" / "run.json").is_file(), reason="no sample runs")
def test_the_frequency_split_runs_for_a_loss_given_as_a_callable(tmp_path):
    dst = tmp_path / "lf"
    shutil.copytree(SAMPLES / "low_frequency", dst, ignore=shutil.ignore_patterns("analysis"))
    (dst / "run.json").write_text(json.dumps({**json.loads((dst / "run.json").read_text()),
                                              "loss": "__main__:half_mse"}))
    res = analyze(dst, mechanisms=["low_frequency"], loss_fn=half_mse, write=False).spikes[0]
    lf = next(f for f in res.findings if f.rule == "low_frequency")
    assert lf.fired, lf.message  # the old engine refused: "needs a regression residual (mse)"


@pytest.mark.skipif(not (SAMPLES / "numerical" / "run.json").is_file(), reason="no sample runs")
def test_frequency_says_why_when_every_step_from_onset_is_nan(tmp_path):
    dst = tmp_path / "numerical"
    shutil.copytree(SAMPLES / "numerical", dst, ignore=shutil.ignore_patterns("analysis"))
    events = (dst / "events.jsonl").read_text().replace('"onset": 120, "peak": 131',
                                                        '"onset": 133, "peak": 134')
    events = events.replace('{"type": "spike_open", "spike_id": 0, "step": 120',
                            '{"type": "spike_open", "spike_id": 0, "step": 133')
    (dst / "events.jsonl").write_text(events)
    res = analyze(dst, write=False).spikes[0]
    assert res.context.onset == 133 and res.verdict == "numerical"
    why = res.evidence.skipped["frequency"]
    assert "non-finite" in why and "empty sequence" not in why
