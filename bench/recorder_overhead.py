"""Recorder overhead: per-step time with the recorder divided by without, interleaved in one process.

Two identical (model, Adam) pairs train side by side on the same batches; blocks of steps
alternate between the plain pair and the recorded one (K=8, stride 1, no baseline snapshots,
so this is the steady-state cost: ring capture, per-step scalars, detection). The ratio is
median(recorded step) / median(plain step). Writes bench/results/recorder_overhead.md.
"""

from __future__ import annotations

import copy
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forensics import Recorder  # noqa: E402


def mlp(d_in, width, depth, d_out):
    layers, d = [], d_in
    for _ in range(depth):
        layers += [torch.nn.Linear(d, width), torch.nn.ReLU()]
        d = width
    return torch.nn.Sequential(*layers, torch.nn.Linear(d, d_out))


def step(model, opt, x, y, rec=None):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=False)
    loss = F.mse_loss(model(x), y)
    loss.backward()
    if rec is not None:
        rec.observe(loss, {"x": x, "y": y})
    opt.step()
    return time.perf_counter() - t0


def measure(name, model, batch, *, repeats, block, warmup=3):
    torch.manual_seed(0)
    plain = model
    recorded = copy.deepcopy(model)
    opt_a = torch.optim.Adam(plain.parameters(), lr=1e-4)
    opt_b = torch.optim.Adam(recorded.parameters(), lr=1e-4)
    d_in = model[0].in_features
    d_out = model[-1].out_features
    x, y = torch.randn(batch, d_in), torch.randn(batch, d_out)
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(recorded, opt_b, Path(tmp) / "run", ring_size=8, baseline_every=0)
        for _ in range(warmup):
            step(plain, opt_a, x, y)
            step(recorded, opt_b, x, y, rec)
        times_a, times_b = [], []
        for r in range(repeats):
            order = [(plain, opt_a, None, times_a), (recorded, opt_b, rec, times_b)]
            if r % 2:
                order.reverse()
            for m, o, rc, out in order:
                out += [step(m, o, x, y, rc) for _ in range(block)]
        rec.close()
    n = sum(p.numel() for p in model.parameters())
    a, b = statistics.median(times_a), statistics.median(times_b)
    return {"model": name, "params": n, "batch": batch, "steps": len(times_a), "plain_ms": 1e3 * a,
            "recorded_ms": 1e3 * b, "ratio": b / a, "ring_mb": 8 * 4 * 4 * n / 2**20}


def main():
    rows = [
        measure("small MLP 32-256x3-1", mlp(32, 256, 3, 1), 128, repeats=10, block=20),
        measure("10M MLP 512-2048x3-512", mlp(512, 2048, 3, 512), 256, repeats=6, block=5),
    ]
    header = "| model | params | batch | steps/cond | plain ms/step | recorded ms/step | ratio | ring MB (K=8) |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['steps']} | {r['plain_ms']:.2f} | "
                     f"{r['recorded_ms']:.2f} | {r['ratio']:.3f} | {r['ring_mb']:.0f} |")
    table = "\n".join(lines)
    print(table)
    info = (f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}\n"
            f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
            f"torch threads {torch.get_num_threads()}\n"
            f"- python {platform.python_version()}, torch {torch.__version__}\n"
            "- Adam, K=8, stride 1, no snapshot writes (steady state); blocks of steps alternate "
            "between an unrecorded and a recorded copy of the model; medians over all steps.\n")
    out = Path(__file__).resolve().parent / "results" / "recorder_overhead.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Recorder overhead\n\n" + info + "\n" + table + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
