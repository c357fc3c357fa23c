"""Runs through the Hugging Face callback and a plain loop with nn.TransformerEncoderLayer both get
the attention and output-logit measurements; the recorder's opt-in per-step columns."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from forensics import Recorder, open_run
from forensics.analyzer.pipeline import Settings, analyze
from forensics.record.logit_scalars import AttentionMaxima, logit_columns

MECHANISMS = ["attention_logit_growth", "output_logit_divergence"]
V, T = 13, 8


class Encoder(nn.Module):
    """Token embedding, one causal nn.TransformerEncoderLayer, a linear head: (B, T) -> (B, T, V)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        self.layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, V)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(T), persistent=False)

    def forward(self, x):
        return self.head(self.layer(self.emb(x), src_mask=self.mask, is_causal=True))


def ce(logits, y):
    return F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), ignore_index=-100)


def _plain_loop(path, *, columns: bool):
    torch.manual_seed(0)
    model = Encoder()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rec = Recorder(model, opt, path, loss=ce, ring_size=3, tail=2, baseline_every=0,
                   detector={"preset": "robust", "window": 8, "min_history": 8})
    taps = AttentionMaxima(model) if columns else None
    for t in range(40):
        x = (torch.randint(0, V, (8, 1)) + torch.arange(T + 1)) % V
        if t == 30:  # a planted bad batch: random tokens
            x = torch.randint(0, V, (8, T + 1))
        x, y = x[:, :-1], x[:, 1:].clone()
        y[:, :2] = -100  # padding the loss ignores
        logits = model(x)
        loss = ce(logits, y)
        opt.zero_grad()
        loss.backward()
        rec.observe(loss, {"x": x, "y": y}, **({"logits": logits, "attention": taps} if columns else {}))
        opt.step()
    rec.close()
    if taps is not None:
        taps.remove()
    return model


def test_plain_loop_with_transformer_encoder_layer_gets_the_measurements(tmp_path):
    model = _plain_loop(tmp_path / "enc", columns=True)
    run = open_run(tmp_path / "enc")
    assert [s.onset for s in run.spikes] == [30]
    cols = {c: run.steps.column(c).to_pylist() for c in ("logit_max", "log_z_mean", "attn_logit_max")}
    assert all(v is not None and math.isfinite(v) for vals in cols.values() for v in vals)
    result = analyze(tmp_path / "enc", model=model, loss_fn=ce, mechanisms=MECHANISMS,
                     settings=Settings(max_snapshots=3), write=False)
    ev = result.spikes[0].evidence
    heads = ev.family("attn_logit_max")
    assert set(heads) == {"layer.self_attn.h0", "layer.self_attn.h1"}
    assert ev.has("log_z_mean") and ev.has("log_z_recorded") and ev.has("attn_logit_max_recorded")
    s, z = ev.series("log_z_recorded")
    assert z[s == 30][0] == pytest.approx(cols["log_z_mean"][30])
    assert {f.rule: f.status for f in result.spikes[0].findings} == {r: "not_fired" for r in MECHANISMS}


def test_recorder_columns_are_opt_in_and_count_only_the_loss_tokens(tmp_path):
    _plain_loop(tmp_path / "plain", columns=False)
    steps = open_run(tmp_path / "plain").steps
    assert set(steps.column("logit_max").to_pylist()) == {None}
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [50.0, 50.0]]])
    got = logit_columns(logits, torch.tensor([[0, 1, -100]]))
    assert got["logit_max"] == pytest.approx(math.log(3))
    assert got["log_z_mean"] == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert "attn_logit_max" not in got


def test_hf_callback_run_gets_the_measurements(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from test_integrations_hf import _train

    _train(tmp_path, tmp_path / "hf", steps=46, poison={40})  # as test_integrations_hf
    run = open_run(tmp_path / "hf")
    assert [s.onset for s in run.spikes] == [40]
    result = analyze(tmp_path / "hf", allow_import=True, mechanisms=MECHANISMS,
                     settings=Settings(max_snapshots=3), write=False)
    ev = result.spikes[0].evidence
    assert set(ev.family("attn_logit_max")) == {"transformer.h.0.attn.h0", "transformer.h.0.attn.h1"}
    assert ev.has("log_z_mean") and ev.has("logit_max")
    assert all(f.status != "inconclusive" for f in result.spikes[0].findings)
