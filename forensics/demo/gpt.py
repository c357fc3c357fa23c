"""Zoo GPT runs (a tiny causal transformer, cross-entropy, AdamW): a corrupted batch and the
healthy control it is the twin of.

Task: walk sequences x_t = (start + stride·t) mod V (`forensics.zoo.gpt.walks`), next-token
cross-entropy (`forensics.zoo.gpt:next_token_loss`), batches of BATCH sequences, AdamW
β = (0.9, 0.999), no weight decay, a 50-step linear warmup to LR (the control).

- `gpt_bad_batch`: the control with the batch of step BAD_STEP replaced by uniformly random
  tokens: only that batch is off (the `data` mechanism).
- `gpt_control`: no spike.

Not here (tried, not clean): an lr too high without warmup (×10, ×20, ×40 the base lr from
step 0 gives noisy or slow training, jumps of at most ×1.6 over the running median, no spike).
Adam's β₂ lag at low loss is `forensics.demo.gpt_lag` (full batch, β₂ = 0.98; at β₂ = 0.999 and
lr 3e-2 the loss reaches 5e-6 in 3000 steps without a spike). `gpt_recorder` and `gpt_step` are
shared with it.
"""

import torch

from forensics.demo._common import deterministic, fresh_dir, recorder

SEED = 0
MODEL = {"vocab": 32, "context": 16, "d_model": 16, "layers": 2, "heads": 2}
BATCH, STEPS, LR, WARMUP = 16, 320, 3e-3, 50
BAD_STEP = 260
FACTORY, LOSS = "forensics.zoo.gpt:gpt", "forensics.zoo.gpt:next_token_loss"
# Sized for a committed GPT run of ≲ 1.5 MB: a snapshot (weights, gradient, Adam's m and v) is ~120 KB.
RECORDING = {"ring_size": 3, "tail": 3, "max_spikes": 1, "context_every": 32, "context_span": 64,
             "max_bytes": 1_400_000}


def gpt_recorder(model, opt, out_dir, name: str, task: dict, **settings):
    """The Recorder of a zoo GPT sample run into out_dir/name (emptied first): factory MODEL, loss
    LOSS, seed SEED and the RECORDING settings, any of them overridden by `settings`."""
    return recorder(model, opt, fresh_dir(out_dir, name), factory=FACTORY, kwargs=MODEL, loss=LOSS,
                    task=task, seed=SEED, **{**RECORDING, **settings})


def gpt_step(model, opt, rec, x: torch.Tensor, y: torch.Tensor) -> float:
    """One optimizer step of next-token cross-entropy on token ids x (B, T) against targets y
    (B, T; −100 ignored), observed by `rec` (None: not recorded); returns the loss."""
    from forensics.zoo.gpt import next_token_loss

    opt.zero_grad(set_to_none=False)
    loss = next_token_loss(model(x), y)
    loss.backward()
    if rec is not None:
        rec.observe(loss, {"x": x, "y": y})
    opt.step()
    return float(loss.detach())


def _train(name: str, out_dir, record: bool, *, bad_step=None, lr=LR, warmup=WARMUP,
           baseline_every=0) -> list[float]:
    from forensics.zoo.gpt import gpt, walks

    with deterministic(SEED):
        model = gpt(**MODEL)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        V, T = MODEL["vocab"], MODEL["context"]
        data = walks(STEPS * BATCH, V, T, seed=1)
        noise = torch.Generator().manual_seed(2)
        rec = None
        if record:
            mechanism = "data" if bad_step is not None else None
            task = {"mechanism": mechanism, "lr": lr, "warmup_steps": warmup, "batch_size": BATCH}
            if bad_step is not None:
                task.update(planted_bad_batch_step=bad_step, corruption="uniformly random tokens")
            if mechanism is None:
                task["control"] = True
            rec = gpt_recorder(model, opt, out_dir, name, task, baseline_every=baseline_every)
        losses = []
        for step in range(STEPS):
            seq = data[step * BATCH:(step + 1) * BATCH]
            if step == bad_step:
                seq = torch.randint(0, V, seq.shape, generator=noise)
            losses.append(gpt_step(model, opt, rec, seq[:, :-1], seq[:, 1:]))
            sched.step()
        if rec is not None:
            rec.close()
    return losses


def train_bad_batch(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/gpt_bad_batch (random tokens at step BAD_STEP); return the losses."""
    return _train("gpt_bad_batch", out_dir, record, bad_step=BAD_STEP)


def train_control(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/gpt_control (warmup, the base lr, clean data); return the losses."""
    return _train("gpt_control", out_dir, record, baseline_every=STEPS // 2)  # baselines 0, 160
