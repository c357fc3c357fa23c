"""Engine `optimizer_state`: was the optimizer's state thrown away before the spike?

Adam's first update after its state is emptied (`optimizer.state.clear()`, or a resume that
restores the weights but not the moments) divides m̂ = g by √v̂ = |g|: every coordinate moves by
≈ lr whatever its gradient (Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization",
arXiv 1412.6980, §2: |Δθ| ≤ lr, ≈ lr when m̂/√v̂ = ±1). This engine measures what shows it:

- from `steps/` (no snapshot needed): the optimizer's step counter going back between two
  consecutive steps, the step of the update that ran on the fresh state (r = t − counter_t at the
  first step t after the drop), and that update's norm against the running median of the
  update norms before it;
- from snapshots around the onset: moments that are all zero at a step that is not the run's
  first, the share of coordinates whose update was ≈ lr (|θ_{s+1} − θ_s| within 10% of lr), and
  the share whose second moment after update s is one gradient's square, v = (1 − β₂)·g_s²;
- at the start of a run (its first snapshot): whether the weights are trained or freshly
  initialised. A matrix of i.i.d. entries of any scale has σ_max ≈ rms·(√m + √n) (the Bai–Yin
  edge; Bai & Yin 1988, "Necessary and sufficient conditions for almost sure convergence of
  the largest eigenvalue of a Wishart matrix", Ann. Probab. 16(4)); trained layers grow
  outlier singular values past it. Also the rms against PyTorch's default init
  U(±1/√fan_in), rms 1/√(3·fan_in).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure._steps import LOOKBACK, column, first_step, spike_range

WITHOUT_SNAPSHOTS = True  # the counter and the update norms are in steps/
MEDIAN_OF = 50  # update norms in the running median
NEAR = 40  # selected snapshots (and their s+1) read up to this many steps before onset
TOLERANCE = 0.1  # "≈ lr": within 10%
EXACT = 1e-3  # v = (1 − β₂)·g² holds to float rounding after a reset; a grown g² comes close only
MIN_SIDE = 8  # matrices with a smaller side are left out of the spectral test

METRICS = {
    "step_counter": ("count", "the optimizer's step counter before update t (steps/ optimizer_step)"),
    "update_norm": ("‖Δθ‖", "‖θ_{t+1} − θ_t‖ of update t (steps/ update_norm)"),
    "update_norm_median": ("‖Δθ‖", f"running median of the {MEDIAN_OF} update norms before step t"),
    "counter_before_reset": ("count", "at the step r of the first update on a fresh state (the "
                             "counter went back): the count it would have had, counter_{r−1} + 1"),
    "counter_after_reset": ("count", "at r: the counter after update r (1 when the state was empty)"),
    "update_norm_jump": ("1", "at r: ‖Δθ_r‖ / the running median of the update norms before r"),
    "run_start_counter": ("count", "at the run's first recorded step: its step counter (0 when the "
                          "optimizer started with an empty state)"),
    "moments_empty": ("0/1", "1 when every second moment (exp_avg_sq) in the snapshot is exactly 0"),
    "lr_sized_share": ("1", f"share of coordinates whose update s was ≈ lr: |θ_{{s+1}} − θ_s|/lr within "
                       f"{TOLERANCE:.0%} of 1 (snapshots s and s+1)"),
    "v_one_gradient_share": ("1", f"share of coordinates (g_s ≠ 0) whose v after update s is "
                             f"(1 − β₂)·g_s² within {EXACT:g} (relative): v rebuilt from one gradient"),
    "init_spectral_ratio": ("1", f"at the run's first snapshot: the largest σ_max/(rms·(√m+√n)) over "
                            f"weight matrices (sides ≥ {MIN_SIDE}); ≈ 1 or below for i.i.d. init"),
    "init_norm_ratio": ("1", "at the run's first snapshot: median over weight matrices of rms·√(3·"
                        "fan_in), the rms against PyTorch's default init"),
}


def measure(ev: Evidence, scene) -> None:
    """The counter and update norms from steps/, then the snapshot evidence when there is any."""
    ctx = ev.context
    lo, hi = spike_range(ctx)
    resets = _from_steps(ev, scene.run, lo, hi)
    available = {i.step for i in scene.run.snapshots}
    if not available:
        return
    # the spike's selected snapshots (loaded for the other engines anyway) and each reset step:
    # a bounded number of loads whatever the run's capture
    near = {x for x in scene.window.steps if ctx.onset - NEAR <= x <= ctx.onset}
    for s in sorted(near | (set(resets) & available)):
        _snapshot_evidence(ev, scene, s, available)
    start = first_step(scene.run)
    first = min(available)
    if start is not None and first <= start + 1 and ctx.onset - first <= LOOKBACK:
        _snapshot_evidence(ev, scene, first, available)
        ev.add_many(first, "optimizer_state", _init_distance(scene.snapshot(first).params))


def _from_steps(ev: Evidence, run, lo: int, hi: int) -> list[int]:
    """Counter, update norms and their running median in [lo, hi]; the reset steps found."""
    steps, counter = column(run, "optimizer_step", lo, hi)
    norm_steps, norms = column(run, "update_norm", lo - MEDIAN_OF, hi)
    running = _running_median(norms, MEDIAN_OF)
    medians = {int(s): float(m) for s, m in zip(norm_steps, running, strict=True) if math.isfinite(m)}
    for s, value in zip(norm_steps.tolist(), norms.tolist(), strict=True):
        if s >= lo and math.isfinite(value):
            ev.add(s, "optimizer_state", "update_norm", value)
            if s in medians:
                ev.add(s, "optimizer_state", "update_norm_median", medians[s])
    norm_at = dict(zip(norm_steps.tolist(), norms.tolist(), strict=True))
    for s, c in zip(steps.tolist(), counter.tolist(), strict=True):
        if math.isfinite(c):
            ev.add(s, "optimizer_state", "step_counter", c)
    start = first_step(run)
    if start is not None and lo <= start <= hi:
        _, c0 = column(run, "optimizer_step", start, start)
        if c0.size and math.isfinite(c0[0]):
            ev.add(start, "optimizer_state", "run_start_counter", float(c0[0]))
    resets = []
    for i in range(1, len(steps)):
        prev, now = counter[i - 1], counter[i]
        if not (math.isfinite(prev) and math.isfinite(now)) or now >= prev:
            continue
        reset = int(steps[i] - now)  # `now` updates ran on the fresh state, the first at `reset`
        if reset < steps[i - 1]:
            continue  # more updates than steps since the last row: an older state reloaded, not a fresh one
        before = column(run, "optimizer_step", reset - 1, reset - 1)[1]
        after = column(run, "optimizer_step", reset + 1, reset + 1)[1]
        row = {"counter_before_reset": float(before[0]) + 1 if before.size else float(prev) + 1,
               "counter_after_reset": float(after[0]) if after.size else None}
        if math.isfinite(norm_at.get(reset, math.nan)) and medians.get(reset, 0) > 0:
            row["update_norm_jump"] = norm_at[reset] / medians[reset]
        ev.add_many(reset, "optimizer_state", row)
        resets.append(reset)
    return resets


def _running_median(values: np.ndarray, n: int) -> np.ndarray:
    """out[i] = the median of the finite values among values[i−n:i] (NaN when there are none)."""
    out = np.full(len(values), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN window is NaN, said here
        for i in range(1, min(n, len(values))):
            out[i] = np.nanmedian(values[:i])
        if len(values) > n:
            out[n:] = np.nanmedian(np.lib.stride_tricks.sliding_window_view(values[:-1], n), axis=1)
    return out


def _per_param(meta: dict, names, key: str, index: int | None = None) -> dict:
    """{param name: the hyperparameter `key` of its param group} (group 0's value otherwise)."""
    default = meta.get(key)
    if index is not None and isinstance(default, (list, tuple)):
        default = default[index]
    out = {n: default for n in names}
    for group in meta.get("param_groups") or []:
        value = group.get(key)
        if index is not None and isinstance(value, (list, tuple)):
            value = value[index]
        for n in group.get("params") or []:
            if n in out and isinstance(value, (int, float)):
                out[n] = value
    return out


def _near_one(x: torch.Tensor, tolerance: float = TOLERANCE) -> torch.Tensor:
    return (x - 1).abs() <= tolerance


def _snapshot_evidence(ev: Evidence, scene, s: int, available: set) -> None:
    snap = scene.snapshot(s)
    v = snap.exp_avg_sq
    if v:
        ev.add(s, "optimizer_state", "moments_empty",
               float(all(float(t.double().abs().sum()) == 0.0 for t in v.values())))
    if s + 1 not in available:
        return
    nxt = scene.snapshot(s + 1)
    names = [n for n in snap.params if n in nxt.params]
    lrs = _per_param(snap.meta, names, "lr")
    moved, total = 0, 0
    for n in names:
        lr = lrs.get(n)
        if not isinstance(lr, (int, float)) or not lr > 0:
            continue
        step = (nxt.params[n].double() - snap.params[n].double()).abs() / lr
        moved += int(_near_one(step).sum())
        total += step.numel()
    if total:
        ev.add(s, "optimizer_state", "lr_sized_share", moved / total)
    v_next = nxt.exp_avg_sq
    if not v_next or not snap.grads:
        return
    beta2 = _per_param(snap.meta, names, "betas", index=1)
    hit, total = 0, 0
    for n in names:
        g, b2 = snap.grads.get(n), beta2.get(n)
        if g is None or n not in v_next or not isinstance(b2, (int, float)) or b2 >= 1:
            continue
        one = (1 - b2) * g.double().square()
        nz = one > 0
        hit += int(_near_one(v_next[n].double()[nz] / one[nz], EXACT).sum())
        total += int(nz.sum())
    if total:
        ev.add(s, "optimizer_state", "v_one_gradient_share", hit / total)


def _top_singular(w: torch.Tensor, iters: int = 40) -> float:
    """σ_max of `w` by power iteration on wᵀw from a seeded start (an underestimate at worst)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(w.shape[1], generator=g, dtype=w.dtype)
    for _ in range(iters):
        y = w.T @ (w @ x)
        norm = float(y.norm())
        if norm == 0:
            return 0.0
        x = y / norm
    return float((w @ x).norm())


def _init_distance(params: dict) -> dict:
    """The spectral and norm distances of the weight matrices from a fresh random init."""
    spectral, norms = [], []
    for p in params.values():
        if p.ndim < 2 or not p.is_floating_point():
            continue
        w = p.detach().double().reshape(p.shape[0], -1)
        if not bool(torch.isfinite(w).all()):
            continue
        rms = float(w.square().mean().sqrt())
        if rms == 0:
            continue
        m, n = w.shape
        norms.append(rms * math.sqrt(3 * n))
        if min(m, n) >= MIN_SIDE:
            spectral.append(_top_singular(w) / (rms * (math.sqrt(m) + math.sqrt(n))))
    return {"init_spectral_ratio": max(spectral) if spectral else None,
            "init_norm_ratio": float(np.median(norms)) if norms else None}
