"""Whole-analysis time: every sample run, per spike and per engine, plus one spike of a ~1M-parameter MLP.

Times come from ``analyze(run, write=False, progress=...)``: the callback fires before each
engine and once with ``"done"`` after the last, so the gap between two calls is the engine's
time on that spike. "per spike" is first engine start to "done"; "analyze()" is the whole
call (opening the run, rebuilding the model, loading snapshots, rules, verdict).

The 1M case records a fresh run with the project's Recorder: tanh MLP 256-1024-768-1
(1.05M parameters), Gaussian regression (n = 4096), SGD lr 0.05 on batches of 256 for 48
steps, with the labels of the batch at step 32 multiplied by 10 (a planted bad batch);
the recorder's "robust" detector with a 16-step window. The run is analysed ``--repeats``
times and the median is reported.

With ``--gpt`` it times instead one spike of the zoo GPT at ~1M and ~10M parameters (sequence
128, AdamW, a planted random-token batch; see ``bench/_gpt.py``) and the cost of one
Hessian-vector product against PyHessian's, into ``bench/results/analysis_gpt.md``.

With ``--gpt`` the process runs with ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is already
set (``--omp-default`` leaves OpenMP's default): on this shared 2-core machine torch's two OpenMP
threads otherwise spin at every barrier while the other core is taken, and one Hessian-vector
product of the ~10M GPT took 7–12 s instead of ~1 s (load average 5–6; see analysis_gpt.md).
The variable is read when OpenMP loads, so it is set here, before torch is imported.

Run: .venv/bin/python bench/analysis.py [--repeats 2] [--gpt [--runs DIR] [--omp-default]]
"""

from __future__ import annotations

import os
import sys

if "--gpt" in sys.argv and "--omp-default" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import _common as C  # noqa: E402
from forensics.analyzer.mechanisms import MECHANISMS, engines_for  # noqa: E402
from forensics.analyzer.pipeline import analyze  # noqa: E402

ENGINE_ORDER = engines_for(MECHANISMS)

MODEL = {"sizes": [256, 1024, 768, 1], "activation": "tanh"}
N, BATCH, LR, STEPS, BAD_STEP, LABEL_SCALE = 4096, 256, 0.05, 48, 32, 10.0


def timed_analysis(run_dir) -> dict:
    """Run analyze() once; return total seconds, per-spike seconds, per-(spike, engine) seconds, verdicts."""
    marks: list[tuple[float, int, str]] = []

    def progress(spike_id, engine, done, total):
        marks.append((time.perf_counter(), spike_id, engine))

    load0, cpu0, t0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    result = analyze(run_dir, write=False, progress=progress)
    total = time.perf_counter() - t0
    cpu, load1 = time.process_time() - cpu0, os.getloadavg()[0]
    engines: dict[str, list[float]] = defaultdict(list)
    spikes: list[float] = []
    start = None
    for (t, sid, eng), nxt in zip(marks, marks[1:] + [None]):
        if start is None:
            start = t
        if eng == "done":
            spikes.append(t - start)
            start = None
        elif nxt is not None:
            engines[eng].append(nxt[0] - t)
    return {"total": total, "spikes": spikes, "engines": engines, "num_spikes": len(result.spikes),
            "verdicts": [s.verdict for s in result.spikes], "cpu": cpu, "load": (load0, load1)}


class LanczosProbe:
    """Count and time the Hessian engines' (curvature, adam) Lanczos calls, every HVP and every
    gradient-graph build (wrappers only)."""

    def __enter__(self):
        import forensics.analyzer.measure.adam as adam
        import forensics.analyzer.measure.curvature as curv
        from forensics.math.hvp import HVPOperator

        self.calls, self.hvp_s, self.hvps, self.build_s, self.builds = [], 0.0, 0, 0.0, 0
        self._mods = [(m, m.lanczos) for m in (curv, adam)]
        self._op, self._matvec, self._build = HVPOperator, HVPOperator.matvec, HVPOperator._build_graph
        probe = self

        def wrap(original):
            def lanczos(op, *a, **kw):
                t0 = time.perf_counter()
                res = original(op, *a, **kw)
                probe.calls.append((time.perf_counter() - t0, res.num_matvecs, bool(res.converged),
                                    res.reorth_passes))
                return res
            return lanczos

        def matvec(op, v):
            t0 = time.perf_counter()
            out = probe._matvec(op, v)
            probe.hvp_s += time.perf_counter() - t0
            probe.hvps += 1
            return out

        def build(op):
            t0 = time.perf_counter()
            probe._build(op)
            probe.build_s += time.perf_counter() - t0
            probe.builds += 1

        for m, original in self._mods:
            m.lanczos = wrap(original)
        HVPOperator.matvec, HVPOperator._build_graph = matvec, build
        return self

    def __exit__(self, *exc):
        for m, original in self._mods:
            m.lanczos = original
        self._op.matvec, self._op._build_graph = self._matvec, self._build

    def summary(self) -> dict:
        secs = sum(c[0] for c in self.calls)
        return {"Lanczos calls": len(self.calls), "matvecs per call (median)": C.median([c[1] for c in self.calls]),
                "converged": f"{sum(c[2] for c in self.calls)}/{len(self.calls)}",
                "Gram-Schmidt passes / iterations": f"{sum(c[3] for c in self.calls)}/{sum(c[1] for c in self.calls)}",
                "s in lanczos()": secs, "HVPs (all engines)": self.hvps, "s in HVPs": self.hvp_s,
                "graph builds": self.builds, "s in builds": self.build_s}


def record_1m_run(folder: Path) -> Path:
    """Record the planted-spike run of the ~1M MLP into folder/run1m; return its path."""
    from forensics.record.recorder import Recorder
    from forensics.zoo.models import mlp
    from forensics.zoo.tasks import gaussian_regression

    torch.manual_seed(0)
    x, y = gaussian_regression(N, MODEL["sizes"][0], seed=1)
    model = mlp(**MODEL)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    path = folder / "run1m"
    rec = Recorder(model, opt, path, model_factory="forensics.zoo.models:mlp", model_kwargs=MODEL,
                   loss="mse", detector={"preset": "robust", "window": 16, "min_history": 16},
                   ring_size=8, tail=8, baseline_every=0, task={"planted_bad_batch_step": BAD_STEP},
                   seed=0, max_bytes=2 * 1024**3)
    sampler = torch.Generator().manual_seed(3)
    for step in range(STEPS):
        idx = torch.randint(0, N, (BATCH,), generator=sampler)
        xb, yb = x[idx], y[idx] * (LABEL_SCALE if step == BAD_STEP else 1.0)
        opt.zero_grad(set_to_none=False)
        loss = F.mse_loss(model(xb), yb)
        loss.backward()
        rec.observe(loss, {"x": xb, "y": yb})
        opt.step()
    rec.close()
    return path


def engine_row(label, runs, params=None) -> dict:
    """Median over repeats of each engine's time per spike, plus the totals."""
    row = {"run": label, "params": params, "spikes": runs[0]["num_spikes"],
           "with snapshots": len(runs[0]["spikes"]),
           "verdicts": ", ".join(sorted(set(runs[0]["verdicts"]))) or "—",
           "analyze() s": C.median([r["total"] for r in runs]),
           "s/spike (median)": C.median([s for r in runs for s in r["spikes"]]),
           "s/spike (max)": max((s for r in runs for s in r["spikes"]), default=None)}
    if "cpu" in runs[0]:
        row["process CPU s"] = C.median([r["cpu"] for r in runs])
        row["1-min load (start → end)"] = "; ".join(f"{a:.1f} → {b:.1f}"
                                                    for a, b in (r["load"] for r in runs))
    for e in ENGINE_ORDER:
        row[e] = C.median([s for r in runs for s in r["engines"].get(e, [])])
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gpt", action="store_true", help="the zoo GPT cases (analysis_gpt.md) only")
    ap.add_argument("--runs", type=Path, help="with --gpt: keep the recorded runs in this folder and reuse "
                    "those already there (gpt1M, gpt10M)")
    ap.add_argument("--omp-default", action="store_true", help="with --gpt: leave OMP_WAIT_POLICY unset "
                    "(OpenMP's default waiting; see the module doc)")
    args = ap.parse_args()
    if args.gpt:
        return gpt_main(args)
    rows = []
    for run_dir in sorted(p for p in (C.ROOT / "sample_runs").iterdir() if (p / "run.json").is_file()):
        out = timed_analysis(run_dir)
        manifest = json.loads((run_dir / "run.json").read_text())
        rows.append(engine_row(run_dir.name, [out], sum(p["numel"] for p in manifest.get("params", []))))
        print(rows[-1], flush=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-analysis-", dir=C.ROOT / "tmp"))
    try:
        t0 = time.perf_counter()
        run = record_1m_run(folder)
        rec_s = time.perf_counter() - t0
        snaps = sorted((run / "snapshots").glob("*.safetensors"))
        snap_mb = sum(p.stat().st_size for p in snaps) / 1e6
        runs = [timed_analysis(run) for _ in range(args.repeats)]
        with LanczosProbe() as probe:  # one extra pass, instrumented, to say where the time goes
            timed_analysis(run)
        where = probe.summary()
        print(where, flush=True)
        params = sum(s * t for s, t in zip(MODEL["sizes"][:-1], MODEL["sizes"][1:])) + sum(MODEL["sizes"][1:])
        big = engine_row("1M MLP, planted bad batch (recorded here)", runs, params)
        print(big, flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    cols = ["run", "params", "spikes", "with snapshots", "verdicts", "analyze() s", "s/spike (median)", "s/spike (max)",
            *ENGINE_ORDER]
    intro = [
        "- `analyze(run, write=False, progress=cb)` with default Settings (Lanczos tol 1e-3, top-2 "
        "Hessian pairs, NTK on ≤ 512 samples, top-5); engine columns are the median seconds per "
        "spike; sample runs analysed once each (tiny models: 1–3k parameters); 'with snapshots' = "
        "spikes the recorder kept snapshots for (the others get only the step-table checks and no "
        "engine time)",
        f"- 1M case: {STEPS}-step SGD run recorded here in {rec_s:.1f} s ({len(snaps)} snapshots, "
        f"{snap_mb:.0f} MB), analysed {args.repeats}× (median); spikes found: "
        f"{runs[0]['num_spikes']}, verdicts {runs[0]['verdicts']}",
        f"- issue target: the whole analysis of one spike of a ~1M-parameter MLP on CPU in under a "
        f"minute — measured: {big['s/spike (median)']:.1f} s per spike "
        f"(analyze() call {big['analyze() s']:.1f} s in all)",
    ]
    C.write_result("analysis", "Whole-analysis time per spike and per engine", intro,
                   [("Results (seconds)", C.table(rows + [big], cols)),
                    ("Where the 1M spike's curvature time goes (one extra instrumented pass; wrappers "
                     "around the curvature engine's `lanczos` and `HVPOperator.matvec`)", C.table([where]))],
                   libs=("numpy", "scipy", "pyarrow"))


def gpt_main(args) -> None:
    """One planted spike of the zoo GPT at each size: whole analysis, per engine; HVP vs PyHessian."""
    from _gpt import (GPT_BAD, GPT_LR, GPT_SIZES, GPT_STEPS, GPT_WARMUP, hvp_forms, hvp_vs_pyhessian,
                      record_gpt_run)

    from forensics.analyzer.measure._hessian import HESSIAN_TOKENS
    from forensics.analyzer.pipeline import Settings

    rows, wheres, notes = [], [], []
    folder = args.runs or Path(tempfile.mkdtemp(prefix="bench-gpt-", dir=C.ROOT / "tmp"))
    try:
        for label, kwargs in GPT_SIZES.items():
            t0 = time.perf_counter()
            run = folder / ("gpt" + label.strip("~"))
            reused = args.runs is not None and (run / "run.json").is_file()
            if not reused:
                run = record_gpt_run(folder, kwargs, run.name)
            rec_s = time.perf_counter() - t0
            with LanczosProbe() as probe:  # wrappers only: the timed passes are the instrumented ones
                runs = [timed_analysis(run) for _ in range(args.repeats)]
            wheres.append({"model": label, **probe.summary()})
            n = sum(p["numel"] for p in json.loads((run / "run.json").read_text())["params"])
            rows.append(engine_row(f"zoo GPT {label} ({kwargs})", runs, n))
            notes.append(f"- {label}: " + ("run reused from --runs" if reused else
                                            f"recorded {GPT_STEPS} steps in {rec_s:.0f} s") + "; spikes "
                         f"{[s for s in runs[0]['verdicts']]}; per spike {rows[-1]['s/spike (median)']:.1f} s "
                         f"(1-min load average after it: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
            print(rows[-1], wheres[-1], flush=True)
            if args.runs is None:
                shutil.rmtree(run, ignore_errors=True)
    finally:
        if args.runs is None:
            shutil.rmtree(folder, ignore_errors=True)
    hvp = hvp_vs_pyhessian()
    forms = hvp_forms(GPT_SIZES["~1M"])
    cols = ["run", "params", "spikes", "verdicts", "analyze() s", "s/spike (median)", "process CPU s",
            "1-min load (start → end)", *ENGINE_ORDER]
    intro = [f"- `analyze(run, write=False)` with default Settings, {args.repeats} repeat(s), median; "
             f"planted random-token batch at step {GPT_BAD} of {GPT_STEPS} (AdamW lr {GPT_LR:g} after a "
             f"{GPT_WARMUP}-step warm-up); curvature/adam Hessians on "
             f"⌊{HESSIAN_TOKENS}/128⌋ = {HESSIAN_TOKENS // 128} whole sequences (HESSIAN_TOKENS), at "
             f"{Settings.hessian_snapshots} of the selected steps (hessian_snapshots; adam's λ_max(P⁻¹H) at "
             f"those up to the onset, tol {Settings.pre_lanczos_tol:g}; no plain λ_max on Adam runs "
             f"(adam_plain_lambda_max={Settings.adam_plain_lambda_max}); elsewhere tol "
             f"{Settings.lanczos_tol:g})",
             f"- OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: OpenMP default)')}, "
             f"torch threads "
             f"{torch.get_num_threads()}; 'process CPU s' is this process's CPU time over the analyze() call "
             "(both threads together), next to its wall time, and the 1-min load average (other users' "
             "jobs included) when it started and ended", *notes]
    sections = [("Results (seconds)", C.table(rows, cols)),
                ("Where the Hessian engines' (curvature, adam) time goes (instrumented pass)", C.table(wheres))]
    if hvp:
        sections.append(("One Hessian-vector product on the bench's 1M MLP, in turn with PyHessian",
                         C.table([hvp])))
    sections.append(("One Hessian-vector product of the ~1M zoo GPT on 4×128 tokens: double backward on "
                     "a graph built once vs torch.func forward-over-reverse (benchmark_hvp, 5 repeats)",
                     C.table([forms])))
    C.write_result("analysis_gpt", "Whole-analysis time of one zoo GPT spike, per engine", intro, sections,
                   libs=("numpy", "PyHessian"))


if __name__ == "__main__":
    main()
