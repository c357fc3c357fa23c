"""Counterfactual replay cost: one `forensics.whatif` call against the training steps it re-runs.

A whatif call replays a spike window of W steps once without a change (the self-check, which
also reads every snapshot's weights to compare) and once per change, so it costs about
W × (1 + changes) training steps plus reading the window's snapshots. For each sample run with
a spike, and for a planted spike in a ~1.1M-parameter MLP recorded here, we time (medians of
`--repeats`, on this machine):

- the recorded step time: the median wall_time difference of the run's own steps (training
  step + recorder, as recorded, possibly on another machine);
- a plain step here: forward + backward + optimizer step of the rebuilt model on the window's
  first batch (no recorder);
- the whatif call with one change (its total, and per replayed step);

and report the replay cost per replayed step as a multiple of both step times.

Run: .venv/bin/python bench/whatif.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _common as C
import torch
import torch.nn.functional as F

from forensics.record.recorder import Recorder
from forensics.rundir.reader import open_run
from forensics.whatif import whatif

RUNS = {"adam_beta2_lag": "eps=x1000", "bad_batch": "skip_batch=400", "catapult": "lr=x0.5",
        "eos": "lr=x0.5", "low_frequency": "lr=x0.5", "numerical": "lr=x0.1", "small_batch": "lr=x0.5"}


def record_mlp(path: Path, steps: int = 100, spike_at: int = 80) -> Path:
    """A ~1.1M-parameter MLP (64-1024-1024-1), Adam, batch 256, a bad batch at `spike_at`."""
    torch.manual_seed(0)
    model = C.mlp([64, 1024, 1024, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    with Recorder(model, opt, path, model_factory="forensics.zoo.models:mlp",
                  model_kwargs={"sizes": [64, 1024, 1024, 1]}, ring_size=8, tail=8, baseline_every=0) as rec:
        for t in range(steps):
            x = torch.randn(256, 64, generator=g)
            y = x[:, :1].sin() * (30.0 if t == spike_at else 1.0)
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            rec.observe(loss, {"x": x, "y": y})
            opt.step()
    return path


def plain_step_ms(run, repeats: int) -> float:
    """Median ms of forward + backward + step of the rebuilt model on the window's first batch."""
    from forensics.analyzer.replay import Replay
    from forensics.replay import spike_window

    rp = Replay.from_run(run, device="cpu")
    win = spike_window(run, run.spikes[0].spike_id)
    batch = win.snapshots[win.start].load(include=("batch",)).batch
    opt = torch.optim.SGD(rp.model.parameters(), lr=0.0)
    times = []
    for _ in range(max(5, repeats * 5)):
        t0 = time.perf_counter()
        opt.zero_grad()
        rp.loss_fn(rp.model(batch[rp.input_key]), batch[rp.target_key]).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def measure(name: str, path: Path, change: str, repeats: int) -> dict:
    """One table row: the whatif call on spike 0 of `path` with `change`, against the step times."""
    run = open_run(path)
    dt = run.steps.column("wall_time").to_pylist()
    recorded = 1e3 * statistics.median(b - a for a, b in zip(dt, dt[1:], strict=False))
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = whatif(run, run.spikes[0].spike_id, [change])
        times.append(time.perf_counter() - t0)
    total = statistics.median(times)
    replayed = len(result.steps) * 2
    per = 1e3 * total / replayed
    plain = plain_step_ms(run, repeats)
    params = sum(p["numel"] for p in run.manifest["params"])
    return {"run": name, "params": params, "window": len(result.steps),
            "change": change, "whatif s": total, "per replayed step ms": per,
            "recorded step ms": recorded, "× recorded": per / recorded, "plain step ms": plain,
            "× plain": per / plain, "reproduced": result.reproduced}


def main() -> None:
    """Measure every run, write bench/results/whatif.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [measure(n, C.ROOT / "sample_runs" / n, c, args.repeats) for n, c in RUNS.items()]
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(measure("mlp 64-1024-1024-1 (recorded here)", record_mlp(Path(tmp) / "mlp"),
                            "skip_batch=80", args.repeats))
    cols = ["run", "params", "window", "change", "whatif s", "per replayed step ms", "recorded step ms",
            "× recorded", "plain step ms", "× plain", "reproduced"]
    intro = [
        f"- one intra-op thread; {args.repeats} repeats, medians; a call replays the window twice "
        "(self-check + one change): 'per replayed step' = call time / (2 × window)",
        "- 'recorded step' = median wall_time step of the run (training + recorder, where it was recorded: "
        "the sample runs on this kind of machine); 'plain step' = forward + backward + step here, "
        "no recorder",
        "- the call also reads every snapshot of the window (weights for the self-check, batches), verifies "
        "their digests and rebuilds model and optimizer twice; on tiny models these fixed costs dominate",
    ]
    C.write_result("whatif", "Counterfactual replay: cost per replayed step", intro,
                   [("Per run", C.table(rows, cols))], libs=("safetensors",))


if __name__ == "__main__":
    main()
