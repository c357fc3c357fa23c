"""Benchmark of the catalog: cross-run SQL over 100 synthetic runs x 100k steps.

The runs are written with the project's own writers (rundir.manifest, rundir.steps,
rundir.events) into a cached temp folder, then timed: opening the catalog, a per-run
aggregate over every step, a join of spikes with the steps before them, and one spike's
neighbourhood in one run. Prints a table and writes bench/results/catalog.md.

    python bench/catalog.py [--runs 100] [--steps 100000] [--chunk 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERIES = {
    "per run: max loss, steps, spikes": """
        WITH m AS (SELECT run_id, max(loss) AS max_loss, count(*) AS steps FROM steps GROUP BY run_id)
        SELECT m.*, r.num_spikes FROM m JOIN runs r USING (run_id) ORDER BY max_loss DESC""",
    "join: loss before each spike": """
        SELECT s.run_id, s.spike_id, s.peak_loss / avg(st.loss) AS jump
        FROM spikes s JOIN steps st
          ON st.run_id = s.run_id AND st.step BETWEEN s.onset_step - 100 AND s.onset_step - 1
        GROUP BY s.run_id, s.spike_id, s.peak_loss ORDER BY jump DESC""",
    "one run: steps around a spike": """
        SELECT st.step, st.loss, st.grad_norm
        FROM steps st JOIN spikes s ON st.run_id = s.run_id
        WHERE s.run_id = 'run-050' AND s.spike_id = 1
          AND st.step BETWEEN s.onset_step - 20 AND s.end_step + 20
        ORDER BY st.step""",
}


def make_runs(root: Path, num_runs: int, num_steps: int, chunk: int) -> None:
    """Write `num_runs` runs of `num_steps` steps (3 spikes each) unless already cached."""
    if (root / "DONE").exists():
        return
    import torch

    from forensics.rundir.events import EventLog
    from forensics.rundir.manifest import build_manifest, write_manifest
    from forensics.rundir.steps import write_chunk

    start = time.perf_counter()
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for r in range(num_runs):
        path = root / f"run-{r:03d}"
        path.mkdir(parents=True, exist_ok=True)
        write_manifest(path, build_manifest(
            model, opt, run_id=path.name, model_factory=None, model_kwargs=None, loss="mse",
            batch_keys={"input": "x", "target": "y"}, detector={"preset": "robust"},
            recorder={"steps_chunk": chunk}, task={}, seed=r))
        rng = np.random.default_rng(r)
        step = np.arange(num_steps, dtype=np.int64)
        loss = np.exp(-step / (num_steps / 3)) + 0.01 * rng.random(num_steps)
        spike_id = np.full(num_steps, -1)
        log = EventLog(path, fsync=False)
        for k, onset in enumerate(np.sort(rng.choice(np.arange(1000, num_steps - 1000), 3, replace=False))):
            loss[onset:onset + 30] *= 8.0
            spike_id[onset:onset + 30] = k
            log.append("spike", spike_id=k, onset=int(onset), peak=int(onset) + 2, end=int(onset) + 30,
                       peak_loss=float(loss[onset + 2]), baseline=float(loss[onset - 1]),
                       magnitude=float(loss[onset + 2] / loss[onset - 1]), signal="loss", nonfinite=False)
        sid = [None if v < 0 else int(v) for v in spike_id]
        for i, start in enumerate(range(0, num_steps, chunk)):
            s = slice(start, start + chunk)
            n = len(step[s])
            write_chunk(path, i, {
                "step": step[s], "wall_time": step[s] * 0.01, "loss": loss[s], "lr": np.full(n, 1e-3),
                "grad_norm": rng.random(n), "param_norm": rng.random(n), "update_norm": rng.random(n),
                "optimizer_step": step[s], "adam_ratio_median": rng.random(n),
                "adam_ratio_frac_small": rng.random(n), "spike_id": sid[s]})
    (root / "DONE").write_text(f"{time.perf_counter() - start:.1f}\n")


def timed(fn, repeat: int) -> tuple[float, float, float]:
    """(first, median, best) wall seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times[0], statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=10_000, help="rows per steps chunk file")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "catalog.md")
    args = ap.parse_args()

    import duckdb
    import pyarrow

    from forensics.catalog.views import connect, query

    root = Path(tempfile.gettempdir()) / f"forensics-bench-catalog-{args.runs}x{args.steps}-c{args.chunk}"
    make_runs(root, args.runs, args.steps, args.chunk)
    try:
        made = f"in {float((root / 'DONE').read_text()):.0f} s"
    except ValueError:
        made = "earlier"
    files = sum(1 for _ in root.glob("*/steps/*.parquet"))
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())

    load = os.getloadavg()
    rows = []
    first, median, best = timed(lambda: connect(root).close(), args.repeat)
    rows.append(("connect (check footers, make views)", first, median, best, args.runs))
    cat = connect(root)
    assert not cat.notes or all("never analyzed" in n for n in cat.notes), cat.notes[:3]
    for name, sql in QUERIES.items():
        n = query(cat, sql).num_rows
        first, median, best = timed(lambda sql=sql: query(cat, sql), args.repeat)
        rows.append((name, first, median, best, n))

    header = f"{'what':<38} {'first s':>8} {'median s':>9} {'best s':>8} {'rows':>6}"
    lines = [header, "-" * len(header)]
    lines += [f"{w:<38} {a:>8.3f} {m:>9.3f} {b:>8.3f} {n:>6}" for w, a, m, b, n in rows]
    print("\n".join(lines))

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    md = [
        "# Catalog benchmark",
        "",
        f"`python bench/catalog.py --runs {args.runs} --steps {args.steps} --chunk {args.chunk}`, "
        f"{datetime.date.today().isoformat()}.",
        "",
        f"- machine: {cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        f"- versions: Python {platform.python_version()}, duckdb {duckdb.__version__}, "
        f"pyarrow {pyarrow.__version__}",
        f"- data: {args.runs} runs x {args.steps:,} steps = {args.runs * args.steps:,} step rows in "
        f"{files:,} Parquet chunks of {args.chunk:,} rows ({size / 2**20:.0f} MiB), 3 online spikes "
        f"per run from events.jsonl; written with the project's writers"
        + f" {made} (cached in {root})",
        f"- timings: wall seconds of {args.repeat} repeats (first, median, best), warm page cache; "
        f"load average at the start {load[0]:.1f} (the machine is shared: other jobs were running)",
        "",
        "| what | first s | median s | best s | rows |",
        "|---|---:|---:|---:|---:|",
        *[f"| {w} | {a:.3f} | {m:.3f} | {b:.3f} | {n} |" for w, a, m, b, n in rows],
        "",
        "Queries:",
        "",
        *[f"- **{name}**: `{' '.join(sql.split())}`" for name, sql in QUERIES.items()],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(md))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
