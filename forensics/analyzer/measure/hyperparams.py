"""Engine `hyperparams`: the hyperparameters in force around a spike, as recorded.

Three sources, all read without loading a tensor:
- `steps/` `lr`: the lr of param group 0 in force for update t, at every recorded step from
  `LOOKBACK` steps before onset to the end of the spike;
- `steps/` `param_groups` (docs/format.md): per step, a JSON list of every param group's lr, β₁,
  β₂, ε, weight decay, momentum and dampening. Each value is written at the first and last step
  of the range and on both sides of every change (the step before it and the step it took
  effect), so a change is located to the step without one row per step and name;
- snapshot metadata `param_groups`, for runs whose `steps/` have no such column (older runs):
  the same values at each snapshot in that range and the last one before it; a change seen
  here happened between two snapshot steps.
Whether an lr scheduler drives a group is read from its `initial_lr` key (set by every
`torch.optim.lr_scheduler` scheduler) in run.json or the snapshot headers.
Judging which change matters is the rules' job.
"""

from __future__ import annotations

import json
import math

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure._steps import column, spike_range
from forensics.rundir.snapshots import read_meta

WITHOUT_SNAPSHOTS = True  # steps/ holds lr and param_groups; snapshot headers serve older runs
HPARAMS = ("lr", "beta1", "beta2", "eps", "weight_decay", "momentum", "dampening")

METRICS = {
    "lr_recorded": ("lr", "the lr of param group 0 in force for update t (steps/ lr), every step"),
    "hparam@*": ("as recorded", "hyperparameter <name> of param group <k> in force (`hparam@lr.g0`, "
                 f"`hparam@beta2.g1`, ...; names: {', '.join(HPARAMS)}): from steps/ param_groups at the "
                 "range's ends and on both sides of each change, else at each snapshot"),
    "param_groups": ("count", "how many param groups the optimizer had (at the same steps)"),
    "lr_scheduled@*": ("0/1", "at onset, `lr_scheduled@g<k>`: 1 when param group k carries `initial_lr`, "
                       "the key every torch lr scheduler sets (its lr follows a schedule)"),
}


def member(name: str, group: int) -> str:
    """The metric of hyperparameter `name` of param group `group`, e.g. `hparam@lr.g0`."""
    return f"hparam@{name}.g{group}"


def group_values(group: dict) -> dict[str, float]:
    """The known numeric hyperparameters of one recorded param group (betas split in two; the
    flat `beta1`/`beta2` keys of steps/ param_groups are read as they are)."""
    out = {}
    for name in HPARAMS:
        value = group.get(name)
        if name.startswith("beta") and value is None:
            betas = group.get("betas")
            value = betas[int(name[-1]) - 1] if isinstance(betas, (list, tuple)) and len(betas) == 2 else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def step_groups(run, lo: int, hi: int) -> list[tuple[int, list[dict]]] | None:
    """(step, param groups) from steps/ `param_groups` with lo <= step <= hi, by step; None when
    the run has no such column. A row whose text is not a JSON list is left out."""
    table = run.steps
    if table is None or "param_groups" not in table.column_names:
        return None
    steps = table.column("step").to_pylist()
    texts = table.column("param_groups").to_pylist()
    out = []
    for s, text in sorted((s, t) for s, t in zip(steps, texts, strict=True) if lo <= s <= hi and t):
        try:
            groups = json.loads(text)
        except ValueError:
            continue
        if isinstance(groups, list):
            out.append((int(s), [g if isinstance(g, dict) else {} for g in groups]))
    return out


def _per_step(ev: Evidence, rows: list[tuple[int, list[dict]]]) -> None:
    """Each value at the range's ends and on both sides of each change (see the module doc)."""
    values = [(s, {(name, k): v for k, g in enumerate(groups) for name, v in group_values(g).items()},
               len(groups)) for s, groups in rows]
    keep = {0, len(values) - 1} if values else set()
    for i in range(1, len(values)):
        if values[i][1] != values[i - 1][1] or values[i][2] != values[i - 1][2]:
            keep |= {i - 1, i}
    for i in sorted(keep):
        step, vals, count = values[i]
        ev.add(step, "hyperparams", "param_groups", count)
        for (name, k), v in vals.items():
            ev.add(step, "hyperparams", member(name, k), v)


def _from_snapshots(ev: Evidence, scene, lo: int, hi: int) -> list[dict]:
    """Every group's values at the snapshots in range and the last before it; the groups seen."""
    infos = [i for i in scene.run.snapshots if i.step <= hi]
    before = [i for i in infos if i.step < lo]
    seen = []
    for info in ([before[-1]] if before else []) + [i for i in infos if i.step >= lo]:
        try:
            groups = read_meta(info.path).get("param_groups")
        except ValueError as exc:  # one unreadable header loses only its own step
            ev.skip("hyperparams", f"snapshot of step {info.step}: {exc}")
            continue
        if not isinstance(groups, list):
            continue
        seen = groups
        if ev.at("param_groups", info.step) is not None:
            continue  # steps/ gave this step already
        ev.add(info.step, "hyperparams", "param_groups", len(groups))
        for k, group in enumerate(groups):
            if isinstance(group, dict):
                for name, value in group_values(group).items():
                    ev.add(info.step, "hyperparams", member(name, k), value)
    return seen


def _latest_groups(scene, hi: int) -> list:
    """The param groups in the header of the last snapshot at or before `hi` ([] if none or unreadable)."""
    infos = [i for i in scene.run.snapshots if i.step <= hi]
    try:
        groups = read_meta(infos[-1].path).get("param_groups") if infos else None
    except ValueError:
        return []
    return groups if isinstance(groups, list) else []


def measure(ev: Evidence, scene) -> None:
    """The recorded lr per step, every group's hyperparameters around each change, and which
    groups follow an lr scheduler."""
    lo, hi = spike_range(ev.context)
    steps, lrs = column(scene.run, "lr", lo, hi)
    for s, lr in zip(steps.tolist(), lrs.tolist(), strict=True):
        if math.isfinite(lr):
            ev.add(s, "hyperparams", "lr_recorded", lr)
    rows = step_groups(scene.run, lo, hi)
    if rows:
        _per_step(ev, rows)
        seen = _latest_groups(scene, hi)
    else:
        seen = _from_snapshots(ev, scene, lo, hi)
    if not seen:
        seen = ((scene.run.manifest.get("optimizer") or {}).get("param_groups")) or []
    for k, group in enumerate(seen):
        if isinstance(group, dict):
            ev.add(ev.context.onset, "hyperparams", f"lr_scheduled@g{k}", float("initial_lr" in group))
