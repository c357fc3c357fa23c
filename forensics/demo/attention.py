"""Attention-logit growth, and its qk-layernorm control: a one-layer pre-LN GPT at a high lr.

A causal transformer with its q·kᵀ written out (zoo GPT, `attention="explicit"`), AdamW with
β₂ = 0.95 and a linear warmup over 300 steps to a high peak lr (0.5) on in-context random walks:
the largest attention logit stays at 2–13 until step ~240, then grows (153 at step 260, 421 at 300,
1.6·10³ at 320) as the lr ramps, the head's softmax collapses onto one key, and at step 326 the
loss leaves (×14 by step 337) (Wortsman et al. 2023, arXiv 2309.14322, Fig. 1 at small scale).
The control differs in one setting, qk_norm=True (LayerNorm on queries and keys; Dehghani et al. 2023, arXiv
2302.05442): the logits stay below ~7 and the loss falls. The control keeps a baseline snapshot
every 50 steps (150 in the growth run, whose byte budget goes to its spikes), so the false-alarm
count has pseudo-spikes to judge (`forensics.analyzer.false_alarms`).
"""

import torch

from forensics.demo._common import deterministic, fresh_dir, recorder
from forensics.record.logit_scalars import AttentionMaxima
from forensics.zoo.gpt import gpt, next_token_loss, walks

SEED = 0
VOCAB, CONTEXT = 32, 16
MODEL = {"vocab": VOCAB, "context": CONTEXT, "d_model": 16, "layers": 1, "heads": 2,
         "mlp_ratio": 2, "attention": "explicit"}
PEAK_LR, WARMUP, BETAS, BATCH, STEPS = 0.5, 300, (0.9, 0.95), 16, 360
LOSS = "forensics.zoo.gpt:next_token_loss"
# 48 steps of history before the detector judges: the minibatch loss of the first ~40 steps is
# still falling fast and noisy (the offline re-detection of the control flags step 32 with 16)
DETECTOR = {"preset": "robust", "min_history": 48}


def _train(name: str, out_dir, record: bool, qk_norm: bool) -> list[float]:
    kwargs = {**MODEL, "qk_norm": qk_norm} if qk_norm else dict(MODEL)
    with deterministic(SEED):
        data = walks(2048, VOCAB, CONTEXT, seed=1)
        model = gpt(**kwargs)
        opt = torch.optim.AdamW(model.parameters(), lr=PEAK_LR / WARMUP, betas=BETAS,
                                weight_decay=0.0)
        rec = None
        if record:
            task = ({"mechanism": "attention_logit_growth"} if not qk_norm else
                    {"mechanism": None, "control_of": "attention_logit_growth",
                     "differs": {"qk_norm": [False, True]}})
            task.update({"peak_lr": PEAK_LR, "warmup": WARMUP})
            rec = recorder(model, opt, fresh_dir(out_dir, name), factory="forensics.zoo.gpt:gpt",
                           kwargs=kwargs, loss=LOSS, task=task, seed=SEED, ring_size=3, tail=2,
                           context_every=32,
                           baseline_every=50 if qk_norm else 150, max_spikes=2, steps_chunk=1024,
                           max_bytes=1_000_000, detector=DETECTOR)
        losses = []
        taps = AttentionMaxima(model) if record else None  # per-step attn_logit_max in steps/
        for t in range(STEPS):
            for group in opt.param_groups:
                group["lr"] = PEAK_LR * min(1.0, (t + 1) / WARMUP)
            rows = data[torch.randint(0, data.shape[0], (BATCH,))]
            x, y = rows[:, :-1], rows[:, 1:]
            opt.zero_grad(set_to_none=False)
            logits = model(x)
            loss = next_token_loss(logits, y)
            loss.backward()
            if rec is not None:
                rec.observe(loss, {"x": x, "y": y}, logits=logits, attention=taps)
            opt.step()
            losses.append(loss.item())
        if rec is not None:
            rec.close()
            taps.remove()
    return losses


def train_growth(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/attention_logit_growth (no qk-norm); return the per-step losses."""
    return _train("attention_logit_growth", out_dir, record, qk_norm=False)


def train_qk_norm(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/attention_qk_norm (qk_norm=True, nothing else changed); return the losses."""
    return _train("attention_qk_norm", out_dir, record, qk_norm=True)
