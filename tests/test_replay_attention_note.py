"""The analysis notes say which attention kernel the replay used, for models with attention only."""

import torch

from forensics.analyzer.replay import ATTENTION_NOTE, uses_attention
from forensics.zoo.gpt import gpt
from forensics.zoo.models import mlp


def test_attention_is_found_in_zoo_gpt_and_torch_layers_not_in_an_mlp():
    assert uses_attention(gpt(vocab=16, context=8, d_model=8, layers=1, heads=2))
    assert uses_attention(torch.nn.Sequential(torch.nn.TransformerEncoderLayer(8, 2)))
    assert not uses_attention(mlp([3, 4, 1]))
    assert "math kernel" in ATTENTION_NOTE
