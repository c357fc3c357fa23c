"""Recorder overhead: per-step time with the recorder divided by without, side by side in one process.

Three identical (model, Adam) copies train on the same batches: unrecorded, recorded with the dense ring
(K=8 full states, every step copied) and recorded in keyframe mode (a full state every 16 steps, per step
the batch, loss, hyperparameters and RNG state). Blocks of steps alternate between the three, in a
rotating order; the ratio is median(recorded step) / median(plain step). Steady state: no baseline
snapshots, no spike. Models: the 140k and 10M MLPs and the zoo GPT. Writes
bench/results/recorder_overhead.md. Usage: python bench/recorder_overhead.py [--quick]
"""

from __future__ import annotations

import copy
import datetime
import os
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
from forensics.zoo.gpt import gpt, next_token_loss, walks  # noqa: E402

MODES = {"dense": dict(mode="dense", ring_size=8), "keyframe": dict(mode="keyframe", ring_size=8,
                                                                        keyframe_every=16)}


def mlp(d_in, width, depth, d_out):
    layers, d = [], d_in
    for _ in range(depth):
        layers += [torch.nn.Linear(d, width), torch.nn.ReLU()]
        d = width
    return torch.nn.Sequential(*layers, torch.nn.Linear(d, d_out))


def step(model, opt, loss_fn, x, y, rec=None):
    """One training step; (wall seconds, CPU seconds of this thread). With one torch thread all the work runs
    on this thread, so its CPU time does not count the time the step waits for a busy machine."""
    c0, t0 = time.thread_time(), time.perf_counter()
    opt.zero_grad(set_to_none=False)
    loss = loss_fn(model(x), y)
    loss.backward()
    if rec is not None:
        rec.observe(loss, {"x": x, "y": y})
    opt.step()
    return time.perf_counter() - t0, time.thread_time() - c0


def measure(name, model, x, y, loss_fn, *, repeats, block, warmup=5):
    """Median step times of the plain copy and of each recorded copy, blocks alternating."""
    torch.manual_seed(0)
    copies = {"plain": model, **{m: copy.deepcopy(model) for m in MODES}}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in copies.items()}
    times = {k: [] for k in copies}
    with tempfile.TemporaryDirectory() as tmp:
        recs = {k: Recorder(copies[k], opts[k], Path(tmp) / k, baseline_every=0, loss=loss_fn, probe=None, **opt)
                for k, opt in MODES.items()}
        recs["plain"] = None
        for _ in range(warmup):
            for k in copies:
                step(copies[k], opts[k], loss_fn, x, y, recs[k])
        order = list(copies)
        for r in range(repeats):
            for k in order[r % 3:] + order[:r % 3]:
                times[k] += [step(copies[k], opts[k], loss_fn, x, y, recs[k]) for _ in range(block)]
        modes = {k: recs[k].mode for k in MODES}
        for k in MODES:
            recs[k].close()
    assert modes == {"dense": "dense", "keyframe": "keyframe"}, modes
    n = sum(p.numel() for p in model.parameters())
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    med = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    return {"model": name, "params": n, "batch": x.shape[0], "steps": len(times["plain"]),
            "plain_ms": 1e3 * med["plain"], "dense_ms": 1e3 * med["dense"], "key_ms": 1e3 * med["keyframe"],
            "dense": med["dense"] / med["plain"], "key": med["keyframe"] / med["plain"],
            "plain_cpu": 1e3 * cpu["plain"], "dense_cpu": cpu["dense"] / cpu["plain"], "key_cpu": cpu["keyframe"] / cpu["plain"],
            "dense_mb": 8 * 16 * n / 2**20, "key_mb": (8 // 16 + 2 + 1) * 16 * n / 2**20 + 4 * n / 2**20}


def cases(quick: bool):
    s = 1 if quick else 3
    torch.manual_seed(0)
    small = mlp(32, 256, 3, 1)
    yield ("140k MLP 32-256x3-1", small, torch.randn(128, 32), torch.randn(128, 1), F.mse_loss, 8 * s, 25)
    big = mlp(512, 2048, 3, 512)
    yield ("10M MLP 512-2048x3-512", big, torch.randn(256, 512), torch.randn(256, 512), F.mse_loss, 4 * s, 6)
    kw = {"vocab": 256, "context": 64, "d_model": 128, "layers": 4, "heads": 4}
    seq = walks(32, kw["vocab"], kw["context"], seed=1)
    yield ("zoo GPT d128 L4 T64", gpt(**kw), seq[:, :-1], seq[:, 1:], next_token_loss, 4 * s, 8)


def main():
    quick = "--quick" in sys.argv
    torch.set_num_threads(1)  # all of a step's work on this thread: its CPU time is measurable under load
    rows = []
    for name, m, x, y, fn, r, b in cases(quick):
        rows.append(measure(name, m, x, y, fn, repeats=r, block=b))
        print(rows[-1], flush=True)
    header = ("| model | params | batch | steps/cond | plain ms/step | dense ms/step | dense ratio | "
              "keyframe ms/step | keyframe ratio | plain CPU ms/step | dense ratio (CPU) | keyframe ratio (CPU) | "
              "dense ring MB | keyframe MB |")
    lines = [header, "|" + "---|" * 14]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['steps']} | {r['plain_ms']:.2f} | "
                     f"{r['dense_ms']:.2f} | {r['dense']:.3f} | {r['key_ms']:.2f} | {r['key']:.3f} | "
                     f"{r['plain_cpu']:.2f} | {r['dense_cpu']:.3f} | {r['key_cpu']:.3f} | "
                     f"{r['dense_mb']:.0f} | {r['key_mb']:.0f} |")
    table = "\n".join(lines)
    print(table)
    info = (f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}\n"
            f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
            f"torch threads {torch.get_num_threads()}, load average at the end {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} CPUs\n"
            f"- python {platform.python_version()}, torch {torch.__version__}\n"
            "- Adam; dense: K=8 every step; keyframe: a full state every 16 steps; sync_every=1 (CPU default); "
            "no probe (the same batch every step: the auto probe would be off anyway); "
            "no snapshot writes (steady state); blocks of steps rotate between an unrecorded copy and the two "
            "recorded ones; medians over all steps.\n"
            "- memory columns: dense = 8 full states (16 B/param); keyframe = 3 full states + the replica "
            "(4 B/param), batches not counted.\n")
    out = Path(__file__).resolve().parent / "results" / "recorder_overhead.md"
    if not quick:
        out.parent.mkdir(parents=True, exist_ok=True)
        prev = out.read_text() if out.exists() else ""
        notes = prev.split("<!-- notes -->", 1)[1] if "<!-- notes -->" in prev else "\n"
        out.write_text("# Recorder overhead\n\n" + info + "\n" + table + "\n\n<!-- notes -->" + notes)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
