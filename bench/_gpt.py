"""The zoo GPT cases of bench/analysis.py: a recorded AdamW run with a planted bad batch (random tokens).

Sizes (sequence 128, vocab 512): ~1M = d 128 × 5 layers, ~10M = d 320 × 8 layers (4 heads).
Walk sequences (`forensics.zoo.gpt.walks`), AdamW lr 2e-3 after a linear warm-up over the first
16 steps (no weight decay), batches of 8 sequences, 80 steps, the batch of step 64 replaced by
uniformly random tokens; the recorder's
"robust" detector with a 16-step window on the training loss (probe=None: the recorder's
automatic probe set would evaluate 256 sequences through the model at every step).

Why these: at step 64 both sizes have learned the walks (walk loss ≈ 1.5 at ~1M, ≈ 2.0 at
~10M, against ln 512 = 6.24 at chance), so at the same weights the random-token batch scores
≈ ×5.6 and ≈ ×5.1 a walk batch (measured in a plain loop with this schedule), clearly over
the data rule's ×3. The former schedule (lr 3e-3 from step 0, the plant at step 48 of 64)
left the ~10M model near chance at the plant (walk loss 5.39): the batch scored only ×1.52.
"""

from __future__ import annotations

from pathlib import Path

import torch

GPT_SIZES = {"~1M": {"vocab": 512, "context": 128, "d_model": 128, "layers": 5, "heads": 4},
             "~10M": {"vocab": 512, "context": 128, "d_model": 320, "layers": 8, "heads": 4}}
GPT_BATCH, GPT_STEPS, GPT_BAD, GPT_LR, GPT_WARMUP = 8, 80, 64, 2e-3, 16


def record_gpt_run(folder: Path, kwargs: dict, name: str) -> Path:
    """Record the planted-spike AdamW run of the zoo GPT with `kwargs` into folder/name."""
    from forensics.record.recorder import Recorder
    from forensics.zoo.gpt import gpt, next_token_loss, walks

    torch.manual_seed(0)
    model = gpt(**kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=GPT_LR, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / GPT_WARMUP))
    path = folder / name
    rec = Recorder(model, opt, path, model_factory="forensics.zoo.gpt:gpt", model_kwargs=kwargs,
                   loss="forensics.zoo.gpt:next_token_loss",
                   detector={"preset": "robust", "window": 16, "min_history": 16},
                   ring_size=4, tail=4, baseline_every=0, seed=0, max_bytes=4 * 1024**3, probe=None)
    T, V = kwargs["context"], kwargs["vocab"]
    data, g = walks(GPT_STEPS * GPT_BATCH, V, T, seed=1), torch.Generator().manual_seed(2)
    for step in range(GPT_STEPS):
        seq = data[step * GPT_BATCH:(step + 1) * GPT_BATCH]
        if step == GPT_BAD:
            seq = torch.randint(0, V, seq.shape, generator=g)
        x, y = seq[:, :-1], seq[:, 1:]
        opt.zero_grad(set_to_none=False)
        loss = next_token_loss(model(x), y)
        loss.backward()
        rec.observe(loss, {"x": x, "y": y})
        opt.step()
        warmup.step()
    rec.close()
    return path


def hvp_vs_pyhessian(rounds: int = 21) -> dict | None:
    """Median ms of one Hessian-vector product, ours vs PyHessian 0.1's, taken in turn on the
    bench's 1M MLP (256-1024-768-1 tanh, MSE, 256 samples); None when pyhessian is missing."""
    import importlib
    import statistics
    import time

    import torch.nn.functional as F
    from torch.func import functional_call

    from forensics.math.hvp import HVPOperator
    from forensics.zoo.models import mlp
    from forensics.zoo.tasks import gaussian_regression

    try:
        ph = importlib.import_module("pyhessian.hessian")
    except ImportError:
        return None
    torch.manual_seed(0)
    model = mlp([256, 1024, 768, 1], activation="tanh")
    x, y = gaussian_regression(256, 256, seed=1)
    params = {n: p.detach() for n, p in model.named_parameters()}
    ours = HVPOperator(lambda p: F.mse_loss(functional_call(model, p, (x,)), y), params)
    h = ph.hessian(model, F.mse_loss, data=(x, y), cuda=False)
    v = torch.randn(ours.dim, generator=torch.Generator().manual_seed(0))
    v_list = [t.reshape(p.shape) for t, p in zip(ours.spec.split(v), h.params, strict=True)]
    fns = {"ours": lambda: ours.matvec(v),
           "PyHessian 0.1": lambda: ph.hessian_vector_product(h.gradsH, h.params, v_list)}
    times: dict = {k: [] for k in fns}
    for r in range(rounds):
        for k in list(fns)[r % 2:] + list(fns)[:r % 2]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    ref = torch.cat([t.reshape(-1) for t in ph.hessian_vector_product(h.gradsH, h.params, v_list)])
    out = {f"{k} ms/HVP": 1e3 * statistics.median(t[1:]) for k, t in times.items()}
    out["rel. difference of Hv, ours vs PyHessian"] = float((ours.matvec(v) - ref).norm() / ref.norm())
    return out


def hvp_forms(kwargs: dict, sequences: int = 4) -> dict:
    """ms per product of the two HVP forms (`forensics.math.hvp.benchmark_hvp`) on the zoo GPT
    `kwargs` at init, `sequences` walk sequences, attention on the math SDPA kernel."""
    from torch.func import functional_call
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from forensics.math.hvp import benchmark_hvp
    from forensics.zoo.gpt import gpt, next_token_loss, walks

    torch.manual_seed(0)
    model = gpt(**kwargs)
    seq = walks(sequences, kwargs["vocab"], kwargs["context"], seed=1)
    x, y = seq[:, :-1], seq[:, 1:]
    params = {n: p.detach() for n, p in model.named_parameters()}
    with sdpa_kernel([SDPBackend.MATH]):
        out = benchmark_hvp(lambda p: next_token_loss(functional_call(model, p, (x,), tie_weights=True), y),
                            params, repeats=5)
    return {(f"{k[:-len('_setup_s')]} graph/setup ms" if k.endswith("_setup_s") else f"{k[:-2]} ms/HVP"):
            1e3 * v for k, v in out.items()}
