"""A Hugging Face model recorded in a plain loop (no Trainer callback) is rebuilt by the analyzer from
its folder: the Recorder names `model_from_config` with the model's config in run.json, so
`forensics analyze` gives the planted verdict without `model=` or `allow_import` (before: no factory,
every spike not_analyzed). A non-HF model gets no factory of its own."""

import json

import pytest
import torch

from forensics import Recorder
from forensics.analyzer.pipeline import analyze

transformers = pytest.importorskip("transformers")


def test_plain_loop_hf_model_is_rebuilt_from_its_config(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                  resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    model = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    with Recorder(model, opt, tmp_path / "run", loss="forensics.integrations.huggingface:causal_lm_loss",
                  batch_keys=("input_ids", "labels"), probe=None) as rec:
        for t in range(150):
            start = torch.randint(0, 32, (16, 1), generator=g)
            x = (start + torch.randint(1, 4, (16, 1), generator=g) * torch.arange(16)) % 32
            if t == 120:
                x = torch.randint(0, 32, (16, 16), generator=g)  # a random-token batch
            opt.zero_grad()
            out = model(input_ids=x, labels=x)
            out.loss.backward()
            rec.observe(out.loss, {"input_ids": x, "labels": x})
            opt.step()
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["model"]["factory"] == "forensics.integrations.huggingface:model_from_config"
    analysis = analyze(tmp_path / "run", write=False, mechanisms=["data"])  # rebuilt: no model=
    (spike,) = [s for s in analysis.spikes if s.context.onset == 120]
    assert spike.verdict == "data", spike.verdict_message


def test_a_plain_torch_model_gets_no_factory_of_its_own(tmp_path):
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model, opt, tmp_path / "run", loss="mse", probe=None) as rec:
        x = torch.randn(4, 3)
        loss = torch.nn.functional.mse_loss(model(x), x[:, :1])
        loss.backward()
        rec.observe(loss, {"x": x, "y": x[:, :1]})
        opt.step()
    assert not (json.loads((tmp_path / "run" / "run.json").read_text())["model"] or {}).get("factory")
