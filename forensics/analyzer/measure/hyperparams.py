"""Engine `hyperparams`: the hyperparameters in force around a spike, as recorded.

Two sources, both read without loading a tensor:
- `steps/` `lr`: the lr of param group 0 in force for update t, at every recorded step from
  `LOOKBACK` steps before onset to the end of the spike (the only per-step hyperparameter the
  recorder writes today);
- snapshot metadata `param_groups` (docs/format.md): every param group's lr, β₁, β₂, ε, weight
  decay, momentum and dampening, at each snapshot in that range and the last one before it
  (headers only). A change seen here happened between two snapshot steps.
Judging which change matters is the rules' job.
"""

from __future__ import annotations

import math

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure._steps import column, spike_range
from forensics.rundir.snapshots import read_meta

WITHOUT_SNAPSHOTS = True  # the lr is in steps/; snapshot headers add the other hyperparameters
HPARAMS = ("lr", "beta1", "beta2", "eps", "weight_decay", "momentum", "dampening")

METRICS = {
    "lr_recorded": ("lr", "the lr of param group 0 in force for update t (steps/ lr), every step"),
    "hparam@*": ("as recorded", "at each snapshot: hyperparameter <name> of param group <k> in force "
                 f"(`hparam@lr.g0`, `hparam@beta2.g1`, ...; names: {', '.join(HPARAMS)})"),
    "param_groups": ("count", "at each snapshot: how many param groups the optimizer had"),
}


def member(name: str, group: int) -> str:
    """The metric of hyperparameter `name` of param group `group`, e.g. `hparam@lr.g0`."""
    return f"hparam@{name}.g{group}"


def group_values(group: dict) -> dict[str, float]:
    """The known numeric hyperparameters of one recorded param group (betas split in two)."""
    out = {}
    for name in HPARAMS:
        if name.startswith("beta"):
            betas = group.get("betas")
            value = betas[int(name[-1]) - 1] if isinstance(betas, (list, tuple)) and len(betas) == 2 else None
        else:
            value = group.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def measure(ev: Evidence, scene) -> None:
    """The recorded lr per step and every group's hyperparameters at the nearby snapshots."""
    lo, hi = spike_range(ev.context)
    steps, lrs = column(scene.run, "lr", lo, hi)
    for s, lr in zip(steps.tolist(), lrs.tolist(), strict=True):
        if math.isfinite(lr):
            ev.add(s, "hyperparams", "lr_recorded", lr)
    infos = [i for i in scene.run.snapshots if i.step <= hi]
    before = [i for i in infos if i.step < lo]
    chosen = ([before[-1]] if before else []) + [i for i in infos if i.step >= lo]
    for info in chosen:
        try:
            groups = read_meta(info.path).get("param_groups")
        except ValueError as exc:  # one unreadable header loses only its own step
            ev.skip("hyperparams", f"snapshot of step {info.step}: {exc}")
            continue
        if not isinstance(groups, list):
            continue
        ev.add(info.step, "hyperparams", "param_groups", len(groups))
        for k, group in enumerate(groups):
            if isinstance(group, dict):
                for name, value in group_values(group).items():
                    ev.add(info.step, "hyperparams", member(name, k), value)
