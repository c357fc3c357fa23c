"""Adam β₂ lag on the zoo GPT (a slingshot spike at very low loss), and its ε control.

The zoo GPT of `forensics.demo.gpt` (7.4 k parameters) memorises N_WALKS fixed walk sequences
(`forensics.zoo.gpt.walks`; the first target of each sequence is ignored, −100: one token does
not tell the stride) with full-batch Adam, lr 1e-2, β = (0.9, 0.98), no weight decay, no
schedule. The loss falls smoothly to ~6e-7; the gradient shrinks with it, so g² ≪ v and v decays
like β₂ᵗ, the preconditioner 1/(√v̂ + ε) grows, η·λ_max(P⁻¹H) climbs through Adam's limit
(2 + 2β₁)/(1 − β₁) = 38, and at step ~909 the loss jumps ×10⁶ (Cohen et al. 2022, arXiv
2207.14484; the slingshot of Thilak et al. 2022, arXiv 2206.04817; Bai et al. 2025, arXiv
2506.04805). The control differs in one setting, ε = 1e-6 instead of 1e-8: ε caps 1/P once √v̂
falls to it, η·λ_max(P⁻¹H) peaks below the limit and the loss keeps falling.
"""

import torch

from forensics.demo._common import deterministic
from forensics.demo.gpt import MODEL, SEED, gpt_recorder, gpt_step

N_WALKS, LR, BETAS, STEPS = 16, 1e-2, (0.9, 0.98), 1000
EPS = {"gpt_beta2_lag": 1e-8, "gpt_beta2_control": 1e-6}
# Snapshots of the quiet stretch: the lag run keeps two context snapshots 160 steps apart in the
# 320 steps before its ring (640 and 800 for the onset at 909) and no baselines; the control,
# which has no spike, baselines every 320 steps (0, 320, 640, 960). 1.3 MB of snapshots keep the
# lag run's spike to one step past its peak (912).
LAG_CONTEXT = {"context_every": 160, "context_span": 320, "baseline_every": 0, "max_bytes": 1_300_000}
CONTROL_BASELINE_EVERY = 320


def _train(name: str, out_dir, record: bool) -> list[float]:
    from forensics.zoo.gpt import gpt, walks

    with deterministic(SEED):
        model = gpt(**MODEL)
        opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS[name])
        seq = walks(N_WALKS, MODEL["vocab"], MODEL["context"], seed=1)
        x, y = seq[:, :-1], seq[:, 1:].clone()
        y[:, 0] = -100
        rec = None
        if record:
            task = ({"mechanism": "adam_beta2_lag"} if name == "gpt_beta2_lag"
                    else {"mechanism": None, "control_of": "gpt_beta2_lag",
                          "differs": {"eps": [EPS["gpt_beta2_lag"], EPS[name]]}})
            task.update(full_batch=True, sequences=N_WALKS, ignored_targets="first of each sequence")
            settings = (LAG_CONTEXT if name == "gpt_beta2_lag"
                        else {"baseline_every": CONTROL_BASELINE_EVERY})
            rec = gpt_recorder(model, opt, out_dir, name, task, steps_chunk=1024, **settings)
        losses = [gpt_step(model, opt, rec, x, y) for _ in range(STEPS)]
        if rec is not None:
            rec.close()
    return losses


def train_lag(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/gpt_beta2_lag (ε = 1e-8); return the per-step losses."""
    return _train("gpt_beta2_lag", out_dir, record)


def train_control(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/gpt_beta2_control (ε = 1e-6, nothing else changed); return the losses."""
    return _train("gpt_beta2_control", out_dir, record)
