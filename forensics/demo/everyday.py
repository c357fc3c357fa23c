"""The everyday causes (issue #16), one small recorded run each, with the fault planted at a known step.

- `optimizer_reset`: minibatch Adam; at step RESET the optimizer's state is cleared in place (a
  resume that restores the weights but not Adam's moments): the step counter goes back to 1 and
  the first update moves every coordinate by ≈ lr.
- `lr_jump`: minibatch SGD with Nesterov momentum under a cosine LambdaLR; at step JUMP the
  scheduler is built again (a resume that rebuilds it instead of loading its state): the decayed
  lr snaps back to its initial value, ×25.
- `fp16_overflow`: float16 autocast on the CPU with a `torch.amp.GradScaler` that is *not* passed
  to the Recorder (found automatically); the targets are not normalised (≈ 300) so the scaler
  calibrates down from 2¹⁶ over its first steps; at step OVERFLOW one batch arrives un-normalised
  (inputs ×1e6): the first layer's float16 output is inf, the loss is inf and the scaler skips
  that step. A planted input, honest about what it is: the overflow itself is float16 arithmetic
  of the recorded weights on the recorded batch.
- `short_batch`: 32·12 + 3 samples, batch 32, `drop_last=False`, SGD momentum 0.9, a loss
  normalised by the batch size twice (Σ(f − y)² / B² · 32, the field case's bug): the 3-sample
  last batch of each epoch has a loss ×32/3 too large. run.json names "mse" (the mean), which
  equals the training loss on every full batch; replaying a short batch with it gives the mean
  (the batch is not bad: its size is).
"""

import math

import torch
import torch.nn.functional as F

from forensics.demo._common import deterministic, fresh_dir, mse_step, recorder
from forensics.zoo.models import mlp
from forensics.zoo.tasks import gaussian_regression

SEED = 0
FACTORY = "forensics.zoo.models:mlp"
SMALL = dict(ring_size=4, tail=4, baseline_every=10_000, max_bytes=350_000, steps_chunk=1024)
LOSS_ONLY = dict(detector={"preset": "robust", "signal": "loss"})  # the detector watches the minibatch loss
RESET, JUMP, OVERFLOW = 500, 300, 200
SHORT = {"n": 32 * 12 + 3, "batch": 32, "epochs": 10}


def _batches(x, y, batch: int, steps: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        yield x[idx], y[idx]


def train_optimizer_reset(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/optimizer_reset (Adam's state cleared at step RESET); return the losses."""
    model_kw = {"sizes": [5, 32, 32, 1], "activation": "tanh"}
    with deterministic(SEED):
        x, y = gaussian_regression(1024, 5, seed=1)
        model = mlp(**model_kw)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        rec = recorder(model, opt, fresh_dir(out_dir, "optimizer_reset"), factory=FACTORY, kwargs=model_kw,
                       loss="mse", task={"mechanism": "optimizer_state_reset", "planted_reset_step": RESET,
                                         "how": "optimizer.state.clear() before the step"},
                       seed=SEED, max_spikes=1, **LOSS_ONLY, **SMALL) if record else None
        losses = []
        for t, (xb, yb) in enumerate(_batches(x, y, 64, RESET + 40)):
            if t == RESET:
                opt.state.clear()
            losses.append(mse_step(model, opt, rec, xb, yb))
        if rec is not None:
            rec.close()
    return losses


def _cosine(step: int) -> float:
    """The lr factor: 1 → 0.04 over JUMP steps (cosine), then flat."""
    return 0.04 + 0.96 * 0.5 * (1 + math.cos(math.pi * min(step, JUMP) / JUMP))


def train_lr_jump(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/lr_jump (the scheduler rebuilt at step JUMP: lr ×25); return the losses."""
    model_kw = {"sizes": [5, 16, 16, 1], "activation": "tanh"}
    with deterministic(SEED):
        x, y = gaussian_regression(1024, 5, seed=1)
        model = mlp(**model_kw)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine)
        rec = recorder(model, opt, fresh_dir(out_dir, "lr_jump"), factory=FACTORY, kwargs=model_kw,
                       loss="mse",
                       task={"mechanism": "hyperparameter_jump", "planted_jump_step": JUMP,
                             "how": "LambdaLR built again at the step: lr 0.004 -> 0.1"},
                       seed=SEED, max_spikes=1, **LOSS_ONLY, **SMALL) if record else None
        losses = []
        for t, (xb, yb) in enumerate(_batches(x, y, 64, JUMP + 60)):
            if t == JUMP:
                sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine)  # the resume bug
            losses.append(mse_step(model, opt, rec, xb, yb))
            sched.step()
        if rec is not None:
            rec.close()
    return losses


def train_fp16_overflow(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/fp16_overflow (float16 autocast + GradScaler; inputs ×1e6 at step OVERFLOW)."""
    model_kw = {"sizes": [5, 16, 16, 1], "activation": "relu"}
    with deterministic(SEED):
        x, y = gaussian_regression(1024, 5, seed=1)
        y = 300 * y  # not normalised: the scaled gradients overflow at the scaler's initial 2**16
        model = mlp(**model_kw)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        scaler = torch.amp.GradScaler("cpu")
        rec = recorder(model, opt, fresh_dir(out_dir, "fp16_overflow"), factory=FACTORY, kwargs=model_kw,
                       loss="mse", task={"mechanism": "numerical", "planted_overflow_step": OVERFLOW,
                                         "how": "float16 autocast; inputs x1e6 at the step",
                                         "target_scale": 300},
                       seed=SEED, max_spikes=1, **LOSS_ONLY, **SMALL) if record else None
        losses = []
        for t, (xb, yb) in enumerate(_batches(x, y, 32, OVERFLOW + 60)):
            if t == OVERFLOW:
                xb = xb * 1e6
            opt.zero_grad(set_to_none=False)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(xb)
            loss = F.mse_loss(out.float(), yb)
            scaler.scale(loss).backward()
            if rec is not None:
                rec.observe(loss, {"x": xb, "y": yb})
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
        if rec is not None:
            rec.close()
    return losses


def train_short_batch(out_dir, *, record: bool = True) -> list[float]:
    """Record out_dir/short_batch (the last batch of each epoch holds 3 of 32 samples)."""
    model_kw = {"sizes": [5, 16, 1], "activation": "tanh"}
    with deterministic(SEED):
        x, y = gaussian_regression(SHORT["n"], 5, seed=1)
        model = mlp(**model_kw)
        opt = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=SHORT["batch"],
                                             shuffle=True, drop_last=False,
                                             generator=torch.Generator().manual_seed(2))
        rec = recorder(model, opt, fresh_dir(out_dir, "short_batch"), factory=FACTORY, kwargs=model_kw,
                       loss="mse", task={"mechanism": "short_batch", "usual_batch": SHORT["batch"],
                                         "short_batch": SHORT["n"] % SHORT["batch"],
                                         "steps_per_epoch": math.ceil(SHORT["n"] / SHORT["batch"]),
                                         "training_loss": "sum((f - y)^2) / B^2 * 32 (normalised twice)"},
                       seed=SEED, max_spikes=3, **LOSS_ONLY, **SMALL) if record else None
        losses = []
        for _ in range(SHORT["epochs"]):
            for xb, yb in loader:
                opt.zero_grad(set_to_none=False)
                out = model(xb)
                loss = ((out - yb) ** 2).sum() / out.shape[0] ** 2 * SHORT["batch"]
                loss.backward()
                if rec is not None:
                    rec.observe(loss, {"x": xb, "y": yb})
                opt.step()
                losses.append(loss.item())
        if rec is not None:
            rec.close()
    return losses
