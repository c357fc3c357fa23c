"""Detection on controlled runs with known spikes: does the recorder report every true spike, once,
and nothing on controls? Prints a table and writes bench/results/detection.md.

Truth is the full training loss (all samples of the task, computed by this harness at every step,
outside the timed loop): a true spike opens at the first step whose full loss is above 2x the lowest
full loss of the previous 20 steps (that reference frozen), and lasts while it stays above 2x the
reference; spikes less than 10 steps apart are one (ringing; the detector's merge_gap). A reported
episode matches a true spike when the true peak lies in [onset - 2, end + 2] of the episode; an
episode matching none is false.
"lead/lag" is the median of (reported onset - true onset) over matched spikes (negative: earlier).
Overhead: wall time of the recorded loop (Recorder defaults, into a temp folder) over the plain loop,
and of the recorded loop with probe=None (no objective detection) over the plain loop; medians of
3 interleaved repeats (the machine is shared: read them as rough). "false:
full-loss rise" gives, per false episode, the full loss's rise over it (x its lowest value of the 20
steps before): a false report at x1.9 is a near miss of the truth's 2x line, one at x1.1 is noise.

Run: .venv/bin/python bench/detection.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detection_cases as dc
from _common import table, write_result


def true_spikes(full, ratio=2.0, lookback=20, merge=10) -> list[tuple[int, int, int]]:
    """(onset, peak, end) of the spikes of the full loss (module docstring); end is exclusive."""
    out, cur = [], None
    for t, v in enumerate(full):
        v = v if math.isfinite(v) else math.inf
        if cur is None:
            ref = min(full[max(0, t - lookback):t], default=math.inf)
            if v > ratio * ref:
                cur = [t, t, None, ref, v]
        else:
            if v > cur[4]:
                cur[1], cur[4] = t, v
            if v <= ratio * cur[3]:
                cur[2] = t
                out.append(cur)
                cur = None
    if cur is not None:
        cur[2] = len(full)
        out.append(cur)
    merged = []
    for s in out:
        if merged and s[0] - merged[-1][2] < merge:
            last = merged[-1]
            if s[4] > last[4]:
                last[1], last[4] = s[1], s[4]
            last[2] = s[2]
        else:
            merged.append(list(s))
    return [(s[0], s[1], s[2]) for s in merged]


def evaluate(case, *, overhead: bool = True, repeats: int = 3, **recorder_options) -> dict:
    """Run the case plain and recorded; match the recorder's episodes against the truth."""
    from forensics import Recorder

    torch.set_num_threads(1)
    init = {k: v.clone() for k, v in case.model.state_dict().items()}

    def fresh():
        case.model.load_state_dict(init)
        return case.model

    tmp = Path(tempfile.mkdtemp(prefix="detect-"))
    plain, recorded, noprobe, truth_full, episodes = [], [], [], [], []
    try:
        for rep in range(repeats if overhead else 1):  # interleaved: the machine's load hits all three
            if overhead:
                plain.append(_loop(case, fresh(), None, None))
            model = fresh()
            rec = Recorder(model, case.make_opt(model.parameters()), tmp / f"run{rep}", loss=case.loss_fn,
                           **recorder_options)
            recorded.append(_loop(case, model, rec, truth_full if rep == 0 else None))
            episodes = rec.spikes if rep == 0 else episodes
            if overhead:
                model = fresh()
                rec = Recorder(model, case.make_opt(model.parameters()), tmp / f"np{rep}", loss=case.loss_fn,
                               **{**recorder_options, "probe": None})
                noprobe.append(_loop(case, model, rec, None))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = statistics.median
    t_plain, t_rec = (med(plain), med(recorded)) if overhead else (math.nan, math.nan)
    t_noprobe = med(noprobe) if overhead else math.nan
    truth = true_spikes(truth_full)
    return score(case, truth, episodes, t_plain, t_rec, t_noprobe, truth_full)


def _loop(case, model, rec, truth) -> float:
    """Train `model` on the case's batches (observed by `rec` if given; the full loss appended to
    `truth` if given); returns the wall time outside the truth computation."""
    opt = rec.optimizer if rec is not None else case.make_opt(model.parameters())
    spent = 0.0
    t0 = time.perf_counter()
    for x, y in case.batches:
        if truth is not None:
            a = time.perf_counter()
            with torch.no_grad():
                truth.append(float(case.loss_fn(model(case.X), case.Y)))
            spent += time.perf_counter() - a
        opt.zero_grad()
        loss = case.loss_fn(model(x), y)
        loss.backward()
        if rec is not None:
            rec.observe(loss, {"x": x, "y": y})
        opt.step()
    if rec is not None:
        rec.close()
    return time.perf_counter() - t0 - spent


def full_rise(full, e, last) -> float:
    """The full loss's highest value over the episode / its lowest over the 20 steps before it."""
    end = (e.end if e.end is not None else last) + 1
    ref = min(full[max(0, e.onset - 20):e.onset] or full[:1])
    return max(full[e.onset:end]) / ref if ref > 0 else math.inf


def score(case, truth, episodes, t_plain, t_rec, t_noprobe, full=None) -> dict:
    """One table row: true spikes, reported episodes, matched, false (with the full loss's rise
    over each false episode), split, lead/lag, overheads."""
    last = len(case.batches)
    windows = [(e.onset - 2, (e.end if e.end is not None else last) + 2) for e in episodes]
    hits = [[i for i, (a, b) in enumerate(windows) if a <= s[1] <= b] for s in truth]
    matched = sum(1 for h in hits if h)
    used = {i for h in hits for i in h}
    lags = [episodes[h[0]].onset - s[0] for s, h in zip(truth, hits, strict=True) if h]
    false = [e for i, e in enumerate(episodes) if i not in used]
    rises = ", ".join(f"{e.onset}: x{full_rise(full, e, last):.2f}" for e in false) if full else ""
    return {"case": case.name, "true spikes": len(truth), "reported": len(episodes), "matched": matched,
            "false": len(false), "false: full-loss rise": rises or "—",
            "split": sum(1 for h in hits if len(h) > 1),
            "lead/lag": statistics.median(lags) if lags else None,
            "overhead": t_rec / t_plain if not math.isnan(t_plain) else None,
            "overhead w/o probe": t_noprobe / t_plain if not math.isnan(t_plain) else None,
            "control": case.control, "note": case.note}


def cases(quick: bool = False) -> list:
    """The bench's controlled runs (smaller with `quick`)."""
    steps = 600 if quick else 1000
    out = [dc.catapult(r) for r in (0.5, 0.9, 1.2, 1.5, 1.8)]
    out += [dc.adam(steps=1200 if quick else 2900)]
    out += [dc.sgd(b, steps=steps, ratio=0.5) for b in (2000, 50, 10, 5)]
    out += [dc.sgd(5, steps=steps, ratio=0.1, control=True), dc.heavy(steps=400 if quick else 800)]
    return out


def probe_cost(case, reps: int = 3) -> dict:
    """Median over `reps` of: one probe evaluation (256 samples of the case, forensics' Probe) and
    one plain training step, in microseconds, and their ratio."""
    from forensics.record.probe import Probe

    torch.set_num_threads(1)
    model, n = case.model, len(case.batches)
    opt = case.make_opt(model.parameters())
    keys = {"input": "x", "target": "y"}
    probe = Probe(model, {"x": case.X[:256], "y": case.Y[:256]}, keys, "", case.loss_fn)
    steps, probes = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        for x, y in case.batches:
            opt.zero_grad()
            case.loss_fn(model(x), y).backward()
            opt.step()
        t1 = time.perf_counter()
        for _ in case.batches:
            probe.loss()
        steps.append((t1 - t0) / n * 1e6)
        probes.append((time.perf_counter() - t1) / n * 1e6)
    step, cost = statistics.median(steps), statistics.median(probes)
    return {"case": case.name, "step (us)": round(step), "probe of 256 (us)": round(cost),
            "probe / step": round(cost / step, 2)}


def main() -> None:
    """Run every case, print each row, write bench/results/detection.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rows = []
    for case in cases(args.quick):
        t = time.time()
        rows.append(evaluate(case))
        print(f"{case.name}: {rows[-1]} ({time.time() - t:.1f}s)", flush=True)
    cols = ["case", "true spikes", "reported", "matched", "false", "false: full-loss rise", "split",
            "lead/lag", "overhead", "overhead w/o probe", "note"]
    costs = [probe_cost(dc.sgd(b, steps=200, ratio=0.5)) for b in (5, 50)]
    write_result("detection", "Spike detection on controlled runs", [
        "", "Recorder defaults (detector `robust`, signal `auto`, auto probe, context snapshots).",
        "Truth: the full training loss (bench/detection.py docstring). Controls must report nothing."],
        [("Results", table(rows, cols)),
         ("Probe cost (one evaluation of the 256-sample probe vs one plain SGD step, medians of 3)",
          table(costs, ["case", "step (us)", "probe of 256 (us)", "probe / step"]))], libs=())


if __name__ == "__main__":
    main()
