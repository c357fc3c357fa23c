"""Known answers of the attention and output-logit measurements, and the taps on every kind of
transformer: a hand-built attention layer, the zoo GPT (fused and explicit), nn.TransformerEncoderLayer
in a plain loop, and a tiny Hugging Face GPT-2 from a config."""

import math

import pytest
import torch
from torch import nn

from forensics.math.attention import attention_logits, head_stats, output_logit_stats
from forensics.record.attention_taps import AttentionTaps
from forensics.zoo.gpt import gpt

KW = {"vocab": 17, "context": 12, "d_model": 16, "layers": 2, "heads": 2}


def _hand_mha():
    """One-head attention on R², q = 2x, k = x (in_proj set by hand, no bias)."""
    mha = nn.MultiheadAttention(2, 1, bias=False, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([2 * torch.eye(2), torch.eye(2), torch.eye(2)]))
    return mha


def test_attention_logits_of_a_hand_built_layer():
    x = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])  # (B=1, T=2, E=2)
    # q·kᵀ/√2 with q = 2x, k = x: [[2, 0], [0, 18]] / √2
    expect = torch.tensor([[2.0, 0.0], [0.0, 18.0]]) / math.sqrt(2)
    got = attention_logits((2 * x)[:, None], x[:, None])[0, 0]
    torch.testing.assert_close(got, expect)
    with AttentionTaps(_hand_mha()) as taps:
        taps.model(x, x, x)
    absmax, entropy = taps.layers[""]
    assert absmax.tolist() == pytest.approx([18 / math.sqrt(2)], rel=1e-6)
    p = torch.softmax(expect, dim=-1)
    assert entropy.tolist() == pytest.approx([float(-(p * p.log()).sum(-1).mean())], rel=1e-5)


def test_head_stats_causal_and_masks_known_answers():
    logits = torch.zeros(1, 1, 3, 3)
    _, ent = head_stats(logits, causal=True)  # rows see 1, 2, 3 keys uniformly
    assert float(ent[0]) == pytest.approx((0 + math.log(2) + math.log(3)) / 3, rel=1e-6)
    big = torch.tensor([[[[0.0, 100.0], [5.0, -7.0]]]])
    absmax, _ = head_stats(big, causal=True)  # the masked 100 does not count
    assert float(absmax[0]) == pytest.approx(7.0)
    allowed = torch.tensor([[True, False], [True, True]])
    assert head_stats(big, mask=allowed)[0].tolist() == head_stats(big, causal=True)[0].tolist()
    with pytest.raises(ValueError, match=r"\(B, h, T, S\)"):
        head_stats(torch.zeros(2, 2))


def test_output_logit_stats_known_answers_and_ignore_index():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [50.0, 50.0]]])  # (1, 3, 2)
    targets = torch.tensor([[0, 1, -100]])  # the last token is padding
    s = output_logit_stats(logits, targets)
    assert s["tokens"] == 2
    assert s["log_z_mean"] == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert s["log_z_max"] == pytest.approx(math.log(4)) and s["log_z_min"] == pytest.approx(math.log(2))
    assert s["logit_max"] == pytest.approx(math.log(3))
    assert s["logit_mean"] == pytest.approx(math.log(3) / 4)
    assert s["log_z_sq_mean"] == pytest.approx((math.log(2) ** 2 + math.log(4) ** 2) / 2)
    everything = output_logit_stats(logits)  # no targets: the padding counts too
    assert everything["tokens"] == 3 and everything["logit_max"] == 50.0
    empty = output_logit_stats(logits, torch.full((1, 3), -100))
    assert empty["tokens"] == 0 and math.isnan(empty["log_z_mean"])
    with pytest.raises(ValueError, match="targets of 2 tokens"):
        output_logit_stats(logits, torch.zeros(1, 2, dtype=torch.long))


def _stats(model, *args):
    with torch.no_grad(), AttentionTaps(model) as taps:
        model(*args)
    return {k: (a.tolist(), e.tolist()) for k, (a, e) in taps.layers.items()}


def test_zoo_gpt_fused_and_explicit_attention_measure_the_same_logits():
    torch.manual_seed(0)
    fused = gpt(**KW)
    explicit = gpt(**KW, attention="explicit")
    explicit.load_state_dict(fused.state_dict())
    x = torch.randint(0, 17, (3, 10))
    torch.testing.assert_close(explicit(x), fused(x), rtol=1e-5, atol=1e-6)
    a, b = _stats(fused, x), _stats(explicit, x)
    assert set(a) == set(b) == {"blocks.0", "blocks.1"}
    for layer in a:
        assert a[layer][0] == pytest.approx(b[layer][0], rel=1e-5)
        assert a[layer][1] == pytest.approx(b[layer][1], rel=1e-5)
        assert a[layer][1][0] == pytest.approx(math.lgamma(11) / 10, rel=1e-3)  # near-uniform at init
    with pytest.raises(ValueError, match="attention 'flash'"):
        gpt(**KW, attention="flash")


def test_zoo_gpt_defaults_are_unchanged_and_qk_norm_bounds_the_logits():
    torch.manual_seed(0)
    plain = gpt(**KW)
    names = [n for n, _ in plain.named_parameters()]
    assert not any("norm" in n.split(".")[-2] for n in names if n.count(".") >= 2 and "ln" not in n)
    torch.manual_seed(0)
    normed = gpt(**KW, qk_norm=True)
    # the qk-norm LayerNorms are 1-D: the random init of every other weight is the same draw
    shared = dict(normed.named_parameters())
    for n, p in plain.named_parameters():
        torch.testing.assert_close(shared[n], p, rtol=0, atol=0)
    assert {n for n in shared} - set(names) == {f"blocks.{i}.{m}_norm.{w}" for i in range(2)
                                                for m in "qk" for w in ("weight", "bias")}
    with torch.no_grad():  # scale q and k up: the plain logits grow, the normed ones cannot
        for m in (plain, normed):
            for b in m.blocks:
                b.qkv.weight[: 2 * 16].mul_(300)
    x = torch.randint(0, 17, (2, 12))
    big = max(max(a) for a, _ in _stats(plain, x).values())
    small = max(max(a) for a, _ in _stats(normed, x).values())
    assert big > 50 and small < 10


def test_transformer_encoder_layer_in_a_plain_loop_gets_the_measurements():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    x = torch.randn(3, 5, 8)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    got = _stats(layer, x, mask)
    assert set(got) == {"self_attn"} and len(got["self_attn"][0]) == 2
    # the known answer, recomputed by hand from the in-projection
    W, b = layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias
    h = layer.norm1(x) if layer.norm_first else x
    q = (h @ W[:8].T + b[:8]).view(3, 5, 2, 4).transpose(1, 2)
    k = (h @ W[8:16].T + b[8:16]).view(3, 5, 2, 4).transpose(1, 2)
    s = (q @ k.transpose(-1, -2)) / 2.0
    s = s.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), 0.0)
    assert got["self_attn"][0] == pytest.approx(s.abs().amax(dim=(0, 2, 3)).tolist(), rel=1e-5)
    # in a training loop, the taps see every step and leave the function as they found it
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for _ in range(3):
        with AttentionTaps(layer) as taps:
            loss = layer(x, mask).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        assert set(taps.layers) == {"self_attn"}
    assert torch.nn.functional.scaled_dot_product_attention is sdpa


def test_hf_gpt2_from_a_config_gets_the_measurements():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=31, n_positions=12,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg._attn_implementation = "sdpa"
    model = transformers.GPT2LMHeadModel(cfg)
    got = _stats(model, torch.randint(0, 31, (2, 9)))
    assert len(got) == 2 and all(len(a) == 2 for a, _ in got.values())
    assert all(e[0] == pytest.approx(math.lgamma(10) / 9, rel=2e-2) for _, e in got.values())  # causal


def test_z_loss_adds_palm_s_term_over_the_counted_tokens():
    from forensics.losses import resolve_loss
    from forensics.zoo.gpt import Z_LOSS_WEIGHT, next_token_loss, next_token_z_loss

    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [50.0, 50.0]]])
    targets = torch.tensor([[0, 1, -100]])
    z2 = (math.log(2) ** 2 + math.log(4) ** 2) / 2  # log Z of the two counted tokens
    got = next_token_z_loss(logits, targets)
    assert float(got) == pytest.approx(float(next_token_loss(logits, targets)) + Z_LOSS_WEIGHT * z2)
    assert resolve_loss("forensics.zoo.gpt:next_token_z_loss") is next_token_z_loss  # trusted
