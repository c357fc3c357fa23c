"""The zoo GPT: shapes, causality, the tied head, its trusted rebuild and its next-token loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from forensics.losses import resolve_loss
from forensics.rundir.model import build_model
from forensics.zoo.gpt import gpt, next_token_loss, walks

KW = {"vocab": 17, "context": 12, "d_model": 16, "layers": 2, "heads": 2}


def test_logits_shape_and_causality():
    torch.manual_seed(0)
    m = gpt(**KW).eval()
    x = torch.randint(0, 17, (3, 10))
    out = m(x)
    assert out.shape == (3, 10, 17)
    for t in range(9):  # changing token t+1 leaves the logits at positions ≤ t unchanged ...
        x2 = x.clone()
        x2[:, t + 1] = (x2[:, t + 1] + 1) % 17
        out2 = m(x2)
        torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(out2[:, t + 1], out[:, t + 1])  # ... and changes position t+1
    with pytest.raises(ValueError, match="longer than the context"):
        m(torch.zeros(1, 13, dtype=torch.long))


def test_head_is_tied_to_the_token_embedding():
    m = gpt(**KW)
    assert m.head.weight is m.tok.weight
    names = [n for n, _ in m.named_parameters()]
    assert "tok.weight" in names and "head.weight" not in names  # one parameter, counted once
    d, L, V, T = 16, 2, 17, 12
    block = 2 * 2 * d + 3 * d * d + 3 * d + d * d + d + 4 * d * d + 4 * d + 4 * d * d + d
    assert sum(p.numel() for p in m.parameters()) == V * d + T * d + L * block + 2 * d


def test_rebuilt_from_run_json_without_consent_and_kwargs_checked():
    manifest = {"model": {"factory": "forensics.zoo.gpt:gpt", "kwargs": KW}}
    torch.manual_seed(0)
    assert sum(p.numel() for p in build_model(manifest).parameters()) == \
        sum(p.numel() for p in gpt(**KW).parameters())
    with pytest.raises(ValueError, match="d_model"):
        build_model({"model": {"factory": "forensics.zoo.gpt:gpt", "kwargs": {**KW, "d_model": 1.5}}})
    with pytest.raises(ValueError, match="over the budget"):
        build_model({"model": {"factory": "forensics.zoo.gpt:gpt",
                               "kwargs": {**KW, "vocab": 10**6, "d_model": 1024}}})
    with pytest.raises(PermissionError):  # only the registered callables resolve
        build_model({"model": {"factory": "forensics.zoo.gpt:walks", "kwargs": {}}})
    assert resolve_loss("forensics.zoo.gpt:next_token_loss") is next_token_loss


def test_next_token_loss_ignores_minus_100():
    logits = torch.zeros(2, 3, 5)
    logits[0, 0, 1] = math.log(4.0)  # p(1) = 4/8 at (0, 0)
    y = torch.tensor([[1, -100, 2], [-100, -100, 0]])
    # three counted targets: -log(1/2), -log(1/5), -log(1/5)
    expected = (math.log(2) + 2 * math.log(5)) / 3
    assert float(next_token_loss(logits, y)) == pytest.approx(expected, rel=1e-6)
    assert float(next_token_loss(logits, y)) == pytest.approx(
        float(F.cross_entropy(logits.reshape(-1, 5), y.reshape(-1), ignore_index=-100)))


def test_walks_follow_their_stride():
    s = walks(5, 11, 8, seed=3)
    assert s.shape == (5, 9)
    d = (s[:, 1:] - s[:, :-1]) % 11
    assert bool((d == d[:, :1]).all()) and set(d[:, 0].tolist()) <= {1, 2, 3}
