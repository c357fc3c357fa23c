"""A planted bad batch in the zoo GPT (plain loop, loss defined here, live model): verdict `data`
with curvature measured through causal attention; the same run without it has no `data` verdict."""

import math

import pytest
import torch
import torch.nn.functional as F

from forensics import Recorder
from forensics.analyzer.pipeline import Settings, analyze
from forensics.zoo.gpt import gpt, walks

V, T, BS, STEPS, BAD = 32, 16, 16, 120, 90
KW = {"vocab": V, "context": T, "d_model": 32, "layers": 2, "heads": 2}


def token_loss(logits, targets):
    """Mean next-token cross-entropy over (B, T, V) logits, −100 targets ignored (defined here)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def _train(run_dir, bad):
    torch.manual_seed(0)
    model = gpt(**KW)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    rec = Recorder(model, opt, run_dir, model_factory="forensics.zoo.gpt:gpt", model_kwargs=KW,
                   loss=token_loss, ring_size=4, tail=4)
    data, g = walks(STEPS * BS, V, T, seed=1), torch.Generator().manual_seed(2)
    for t in range(STEPS):
        seq = data[t * BS:(t + 1) * BS]
        if t == bad:  # a corrupted batch: uniformly random tokens
            seq = torch.randint(0, V, seq.shape, generator=g)
        x, y = seq[:, :-1], seq[:, 1:].clone()
        y[:2, -3:] = -100  # padding of two short sequences
        opt.zero_grad()
        loss = token_loss(model(x), y)
        loss.backward()
        rec.observe(loss, {"x": x, "y": y})
        opt.step()
    rec.close()
    return model


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt") / "bad"
    model = _train(d, BAD)
    return analyze(d, model=model, loss_fn=token_loss, write=False, settings=Settings(max_snapshots=6))


def test_planted_bad_batch_is_data_with_curvature_measured(planted):
    [spike] = [s for s in planted.spikes if s.context.onset == BAD]
    assert spike.verdict == "data"
    ev = spike.evidence
    lam = [v for _, e, m, v in ev.rows if e == "curvature" and m == "lambda_max"]
    assert lam and all(math.isfinite(v) and v > 0 for v in lam)
    assert "curvature" not in ev.skipped
    # the NTK and Gauss-Newton engines ran on (B, T, V) logits with ignored targets
    assert "ntk" not in ev.skipped
    assert [v for _, e, m, v in ev.rows if e == "ntk" and m == "eta_crit"]
    assert "integer inputs" in ev.skipped["frequency"]  # inconclusive, with the reason
    assert not any(s.verdict == "data" for s in planted.spikes if s.context.onset != BAD)
    assert any("math kernel" in n for n in planted.notes)  # the notes say which attention kernel


def test_control_run_has_no_data_verdict(tmp_path):
    d = tmp_path / "ctl"
    model = _train(d, None)
    result = analyze(d, model=model, loss_fn=token_loss, write=False, settings=Settings(max_snapshots=6))
    assert not any(s.verdict == "data" for s in result.spikes)
