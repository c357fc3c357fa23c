"""The Hugging Face losses recorded in run.json take a live model's ModelOutput as well as logits
(field case hf_live_model_typeerror: `resolve_loss(run.manifest["loss"])(model(ids), labels)`)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from forensics.integrations.huggingface import causal_lm_loss, causal_lm_loss_label_count  # noqa: E402


@pytest.mark.parametrize("loss", [causal_lm_loss, causal_lm_loss_label_count])
def test_loss_of_a_model_output_equals_the_loss_of_its_logits(loss):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 32, (2, 8))
    labels = ids.clone()
    labels[0, -2:] = -100
    out = model(ids)
    assert not isinstance(out, torch.Tensor)
    assert float(loss(out, labels)) == pytest.approx(float(loss(out.logits, labels)))
    assert float(loss(out.to_tuple(), labels)) == pytest.approx(float(loss(out.logits, labels)))
