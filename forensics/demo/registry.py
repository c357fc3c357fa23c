"""The registry of sample runs: name -> trainer, and `make_all` that (re)records them."""

import time
from pathlib import Path

from forensics.demo import (adam, attention, catapult, eos, everyday, gd, gpt, gpt_lag, low_frequency, sgd,
                            small_batch)

# name -> (trainer, one line on what the run shows); order = the order they are recorded in.
TRAINERS = {
    "catapult": (catapult.train, "NTK catapult after the lr is raised past n/lambda_max(K)"),
    "eos": (eos.train, "edge of stability: sharpness rises to 2/eta, spike, sharpness drops"),
    "adam_beta2_lag": (adam.train_lag, "Adam beta2 lag at very low loss (eps=1e-8)"),
    "adam_control": (adam.train_control, "control: the same Adam run with eps=1e-3, no spike"),
    "low_frequency": (low_frequency.train, "1-D grid EoS spike whose excess and descent are low-frequency"),
    "small_batch": (small_batch.train_small, "rank-2 task, SGD batch 5: many catapults, AGOP aligns"),
    "large_batch": (small_batch.train_large, "rank-2 task, SGD batch 100 at the same lr: no spike"),
    "bad_batch": (sgd.train_bad_batch, "minibatch SGD with one batch's labels x10 at step 400"),
    "numerical": (gd.train_numerical, "lr grown x1.15 per step until the loss is non-finite"),
    "clean_gd": (gd.train_clean_gd, "control: small-lr full-batch GD, no spike"),
    "clean_sgd": (sgd.train_clean_sgd, "control: minibatch SGD (bad_batch without the bad batch)"),
    "attention_logit_growth": (attention.train_growth, "1-layer GPT, AdamW beta2=0.95, warmup to lr 0.5: "
                               "a head's q.k logits grow ~2 -> ~10^3, the loss leaves"),
    "attention_qk_norm": (attention.train_qk_norm, "control: the same run with qk-layernorm, no spike"),
    "optimizer_reset": (everyday.train_optimizer_reset, "minibatch Adam, its state cleared at step 500"),
    "lr_jump": (everyday.train_lr_jump, "cosine LambdaLR rebuilt at step 300: lr x25"),
    "fp16_overflow": (everyday.train_fp16_overflow, "float16 autocast + GradScaler, inputs x1e6 at step 200"),
    "short_batch": (everyday.train_short_batch, "last batch of each epoch 3 of 32, loss normalised twice"),
    "gpt_bad_batch": (gpt.train_bad_batch, "tiny GPT, AdamW: a batch of random tokens at step 260"),
    "gpt_control": (gpt.train_control, "control: the same GPT run on clean data, no spike"),
    "gpt_beta2_lag": (gpt_lag.train_lag, "tiny GPT, full-batch Adam beta2=0.98 to loss 6e-7: beta2 lag"),
    "gpt_beta2_control": (gpt_lag.train_control, "control: the same GPT run with eps=1e-6, no spike"),
}


def make_all(out_dir="sample_runs", names=None, if_missing: bool = False, *, log=print) -> list[Path]:
    """Record the sample runs `names` (all if None) into out_dir/<name>; return their paths.

    With `if_missing`, runs whose folder already holds a run.json are left alone.
    """
    names = list(TRAINERS) if names is None else list(names)
    unknown = [n for n in names if n not in TRAINERS]
    if unknown:
        raise ValueError(f"unknown sample run(s) {', '.join(unknown)}; choose from {', '.join(TRAINERS)}")
    out = Path(out_dir)
    paths = []
    for name in names:
        path = out / name
        if if_missing and (path / "run.json").exists():
            log(f"{name}: present, skipped")
        else:
            start = time.perf_counter()
            TRAINERS[name][0](out)
            log(f"{name}: recorded in {time.perf_counter() - start:.1f} s  ({TRAINERS[name][1]})")
        paths.append(path)
    return paths
