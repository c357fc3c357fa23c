"""Run-level measurements at the run's baseline snapshots: what seed 001's table compares.

Zhu et al. (2023, "Catapults in SGD: spikes in the training loss and their impact on
generalization through feature learning", arXiv 2306.04815) compare runs of different batch
sizes by their number of catapults, the alignment of the trained network's AGOP with the
task's true AGOP, and the test loss. At every baseline snapshot of a run (at most
`MAX_BASELINES`, evenly spread, the last always kept) this measures, on the snapshot's batch:

- `agop_alignment`: cos(G, G*) of the AGOP G = (1/n)Σ J_x(x_i)ᵀJ_x(x_i) with the task's true
  AGOP (`task.true_agop`), or `agop_alignment_final` with the run's final baseline AGOP;
- `lambda_max`: the top Hessian eigenvalue of the batch loss (Lanczos, tol `settings.lanczos_tol`);
- `condensation_index`: λ_max(C)/m of the normalised first-layer neurons;
- `loss`: the batch loss as replayed.

The rows go to measurements.parquet with `spike_id` = −1 (run level) and engine "baselines".
"""

from __future__ import annotations

import numpy as np
import torch

from forensics.analyzer.measure.condensation import first_layer
from forensics.math.agop import TRUE_AGOP_TASKS, agop, agop_alignment, true_agop
from forensics.math.condensation import condensation_index
from forensics.math.hvp import HVPOperator
from forensics.math.lanczos import lanczos

RUN_LEVEL = -1
ENGINE = "baselines"
MAX_BASELINES = 8
AGOP_MAX_N = 256


def baseline_steps(run) -> list[int]:
    """The baseline snapshot steps measured: at most MAX_BASELINES, evenly spread, the last kept."""
    steps = sorted(i.step for i in run.snapshots if i.role == "baseline")
    if len(steps) <= MAX_BASELINES:
        return steps
    idx = np.unique(np.linspace(0, len(steps) - 1, MAX_BASELINES).round().astype(int))
    return [steps[i] for i in idx]


def measure_baselines(run, replay, settings) -> list[tuple[int, str, float]]:
    """(step, metric, value) rows at the run's baseline snapshots (module doc); [] without any."""
    steps = baseline_steps(run)
    task = (run.manifest.get("task") or {}).get("true_agop")
    rows: list[tuple[int, str, float]] = []
    agops: dict[int, torch.Tensor] = {}
    for step in steps:
        snap = run.snapshot(step).load("cpu")
        params = replay.tensors(snap.params)
        if not all(bool(torch.isfinite(t).all()) for t in params.values()):
            continue
        batch = replay.batch(snap)
        rows.append((step, "loss", float(replay.loss(params, batch).detach())))
        op = HVPOperator(lambda p, b=batch: replay.loss(p, b), params)
        eig = lanczos(op, k=1, tol=settings.lanczos_tol, max_iter=120, seed=settings.seed)
        rows.append((step, "lambda_max", float(eig.eigenvalues[0])))
        layer = first_layer(snap.params, replay.model)
        if layer is not None:
            rows.append((step, "condensation_index", condensation_index(*layer)["lambda_max_ratio"]))
        x = batch[replay.input_key]
        if x.dim() == 2 and x.is_floating_point():
            G = agop(lambda xx, p=params: replay.outputs(p, xx), x[:AGOP_MAX_N])
            if task in TRUE_AGOP_TASKS:
                rows.append((step, "agop_alignment", agop_alignment(G, true_agop(task, x.shape[1]))))
            agops[step] = G
    if task not in TRUE_AGOP_TASKS and agops:
        final = agops[max(agops)]
        rows += [(s, "agop_alignment_final", agop_alignment(G, final)) for s, G in agops.items()]
    return rows
