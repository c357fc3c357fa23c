"""Engine `attention`: per layer and head, max |q·kᵀ/√d| and the attention entropy.

At each finite selected step, one forward pass of the replayed model at θ_s on (up to
`ATTENTION_TOKENS` tokens of) batch s, with `forensics.record.attention_taps.AttentionTaps`
watching every attention: the zoo GPT (fused or explicit), `nn.MultiheadAttention` /
`nn.TransformerEncoderLayer` (logits recomputed from the input projections) and Hugging Face
models (switched from "eager" to their "sdpa" attention for the pass). Attention-logit growth
(Dehghani et al. 2023, arXiv 2302.05442; Wortsman et al. 2023, arXiv 2309.14322) is read from
these series. When the recorder was given an `AttentionMaxima` (`forensics.record.logit_scalars`),
the `steps/` column `attn_logit_max` is read too, at every step from `LOOKBACK` before onset (the
trend between snapshots).
"""

from __future__ import annotations

import torch

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure import Skip
from forensics.analyzer.measure._steps import column, spike_range
from forensics.record.attention_taps import AttentionTaps

WITHOUT_SNAPSHOTS = True  # the recorded per-step column alone still shows the trend
ATTENTION_TOKENS = 4096  # one forward pass over at most this many tokens per step

FORWARD_ONLY = True  # forward passes without gradients: the default attention kernel
METRICS = {
    "attn_logit_max": ("logit", "max |q·kᵀ/√d| over every layer, head and attended position"),
    "attn_entropy_min": ("nats", "the lowest mean attention entropy of any head (0: one-hot)"),
    "attn_logit_max@*": ("logit", "max |q·kᵀ/√d| of one head, `attn_logit_max@<layer>.h<head>` "
                         "(layer: the module path, e.g. blocks.0)"),
    "attn_entropy@*": ("nats", "mean attention entropy −Σp log p of one head over the batch's "
                       "queries, `attn_entropy@<layer>.h<head>`"),
    "attn_heads": ("count", "heads measured (all layers)"),
    "attn_logit_max_recorded": ("logit", "steps/ attn_logit_max: max |q·kᵀ/√d| of the training "
                                "forward pass, every recorded step (opt-in)"),
}


def per_head(layers: dict) -> dict[str, float]:
    """The metric row of one step from `AttentionTaps.layers`."""
    row: dict[str, float] = {}
    for layer, (absmax, entropy) in layers.items():
        for h in range(absmax.numel()):
            row[f"attn_logit_max@{layer}.h{h}"] = float(absmax[h])
            row[f"attn_entropy@{layer}.h{h}"] = float(entropy[h])
    maxima = [float(a.max()) for a, _ in layers.values()]
    row["attn_logit_max"] = max(maxima)
    row["attn_entropy_min"] = min(float(e.min()) for _, e in layers.values())
    row["attn_heads"] = float(sum(a.numel() for a, _ in layers.values()))
    return row


def measure(ev: Evidence, scene) -> None:
    """The recorded per-step maxima, then per-head maxima and entropies at each finite selected step."""
    steps, values = column(scene.run, "attn_logit_max", *spike_range(ev.context))
    for s, v in zip(steps, values, strict=True):
        if v == v:  # not NaN
            ev.add(int(s), "attention", "attn_logit_max_recorded", float(v))
    if scene.replay is None and not scene.window.steps:
        return
    replay = scene.require_replay()

    def at(step):
        params = scene.params(step)
        batch = scene.batch(step, max_tokens=ATTENTION_TOKENS)
        with torch.no_grad(), AttentionTaps(replay.model, switch_eager=True) as taps:
            replay.outputs(params, batch[replay.input_key])
        if not taps.layers:
            raise Skip("no attention seen in the model's forward pass (neither nn.MultiheadAttention, "
                       "scaled_dot_product_attention nor an exposed q·kᵀ)")
        return per_head(taps.layers)

    scene.each(ev, "attention", scene.finite_steps(), at)
