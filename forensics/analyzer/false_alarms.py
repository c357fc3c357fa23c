"""How often each rule fires where nothing happened: pseudo-spikes on clean runs.

A clean run (no spike, e.g. `sample_runs/clean_gd`) is judged at every captured snapshot after
its first, as if a spike had its onset and peak there (the first snapshot is the quiet
reference). A rule that fires there is a false alarm. The counts are what the specs'
`false_alarms` fields state (docs/analysis.md):

    python -m forensics.analyzer.false_alarms sample_runs/clean_gd sample_runs/clean_sgd ...

prints, per rule, fired / judged (not inconclusive) / pseudo-spikes.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import asdict

import torch

from forensics.analyzer.evidence import Evidence, SpikeContext
from forensics.analyzer.measure import METRICS, Scene
from forensics.analyzer.mechanisms import MECHANISMS, engines_for
from forensics.analyzer.pipeline import Settings, _context, _judge, _measure
from forensics.analyzer.replay import Replay, pick_device
from forensics.analyzer.rules import SPECS
from forensics.analyzer.window import select
from forensics.rundir.reader import open_run


class _Pseudo:
    """A spike record with onset = peak = `step`."""

    def __init__(self, step: int, baseline: float):
        self.spike_id, self.onset, self.peak, self.end = 0, step, step, step + 1
        self.peak_loss, self.baseline, self.nonfinite = baseline, baseline, False


def pseudo_findings(path, *, settings: Settings | None = None, device=None):
    """(step, findings) for each pseudo-spike of the clean run at `path`."""
    settings = settings or Settings()
    run = open_run(path)
    dev = pick_device(device or "cpu")
    replay = Replay.from_run(run, device=dev)
    steps = sorted(i.step for i in run.snapshots)
    out = []
    for step in steps[1:]:
        ctx = _context(run, _Pseudo(step, 1.0), str(run.manifest.get("run_id", path)))
        window = select([s for s in steps if s <= step], onset=step, peak=step, end=step + 1,
                        max_snapshots=settings.max_snapshots)
        ctx = SpikeContext(**{**asdict(ctx), "ref_step": window.ref,
                              "pre_steps": tuple(s for s in window.steps if s < step)})
        ev = Evidence(ctx, catalog=METRICS)
        scene = Scene(run=run, context=ctx, window=window, replay=replay, replay_error="",
                      settings=settings, device=dev)
        _measure(ev, scene, engines_for(MECHANISMS), None)
        out.append((step, [_judge(SPECS[r], ev) for r in MECHANISMS]))
    return out


def main(paths) -> None:
    """Print, per rule, fired / judged / pseudo-spikes over the clean runs at `paths`."""
    torch.set_num_threads(1)
    fired, judged, total = Counter(), Counter(), Counter()
    for path in paths:
        for _, findings in pseudo_findings(path):
            for f in findings:
                total[f.rule] += 1
                judged[f.rule] += f.status != "inconclusive"
                fired[f.rule] += f.fired
    for rule in MECHANISMS:
        print(f"{rule}: fired {fired[rule]} / judged {judged[rule]} / pseudo-spikes {total[rule]}")


if __name__ == "__main__":
    main(sys.argv[1:])
