"""Engine `frequency`: low- vs high-frequency parts of the spike's excess residual and descent.

The onset batch is held fixed and evaluated at every captured step from the reference to
the end of the tail, giving residuals r_s = n·∂L/∂F at θ_s, from the run's own loss by autograd
(`forensics.math.gauss_newton.loss_residual`: f(θ_s; X) − y for the half-MSE, 2(f − y)/c for
torch's mean MSE over c outputs, softmax − onehot for mean cross-entropy: any regression or
classification output). Steps whose residual is non-finite are left out (named in the skip
reason when that leaves nothing after onset). On a 1-D uniform grid (`task.grid
== "uniform-1d"`) the bands come from the DFT split at k0 cycles (`task.low_freq_cutoff`,
else the largest declared `task.low_k`, else n/16); otherwise from Gaussian filtering in
input space (Xu et al., F-Principle) with δ a fraction q ∈ {0.05, 0.1, 0.2} of the median
squared pairwise distance, reported for every q and judged at q = 0.1. Measured: the low
share of the excess r_peak − r_ref and of the rapid descent r_peak − r_next (Li, Xu & Zhang),
per-step e_low/e_high, and each band's recovery time after the peak.
"""

from __future__ import annotations

import torch

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure import Skip
from forensics.math.frequency import band_energies, recovery_steps
from forensics.math.gauss_newton import loss_residual

QS = (0.05, 0.1, 0.2)
JUDGED_Q = 0.1
RECOVERY_FACTOR = 1.5


METRICS = {
    "e_low": ("1", "per step: ‖r_low‖/‖y_low‖ on the onset batch, r = n·∂L/∂F (y's bands when the "
              "targets have the outputs' shape, else the reference step's residual bands)"),
    "e_high": ("1", "per step: the same for the high band"),
    "low_share_excess": ("1", "at the peak: share of the excess residual r_peak − r_ref in the low "
                         "band (Li, Xu & Zhang 2023, arXiv 2305.12133)"),
    "low_share_descent": ("1", "at the peak: share of the descent r_peak − r_next in the low band"),
    "freq_cutoff": ("cycles or input distance²", "the DFT cutoff k0 in cycles over the grid, or "
                    "δ of the Gaussian filter"),
    "freq_method_dft": ("0/1", "1 for the DFT on a 1-D grid, 0 for Gaussian filtering"),
    "freq_n": ("count", "points of the onset batch"),
    "descent_to_step": ("step", "the captured step after the peak the descent is measured to"),
    "reference_step": ("step", "the captured pre-onset step the excess is measured from"),
    "recovery_low": ("steps", "steps after the peak until the low band's error is back within "
                     f"{RECOVERY_FACTOR:g}× its pre-spike level"),
    "recovery_high": ("steps", "the same for the high band"),
    **{f"low_share_{part}@q{q:g}": ("1", f"low_share_{part} with the Gaussian filter at δ = {q:g}× "
                                         "the median squared pairwise distance (not on a grid)")
       for part in ("excess", "descent") for q in QS},
}


def _bands(scene, x: torch.Tensor, n: int):
    """A function residuals (T, n) -> (T, 2) band energies, and the cutoff/method used."""
    task = scene.context.task
    if task.get("grid") == "uniform-1d":
        k0 = task.get("low_freq_cutoff") or (max(task["low_k"]) if task.get("low_k") else max(1, n // 16))
        return (lambda r: band_energies(r, k0=int(k0))), float(k0), True
    xx = x.reshape(n, -1).double()
    med = float(torch.cdist(xx, xx).pow(2).median())
    delta = JUDGED_Q * med
    return (lambda r: band_energies(r, x=xx, delta=delta)), delta, False


def _require_float(x: torch.Tensor) -> None:
    """Skip for integer inputs (token ids): no input-space distance, so no frequency bands."""
    if not x.is_floating_point():
        raise Skip("integer inputs (token ids) have no input-space distance: no frequency bands")


def _finite(steps, res):
    """(steps, residuals, dropped steps): the steps whose residual is all finite, and the others."""
    keep = torch.isfinite(res).flatten(1).all(dim=1).tolist()
    dropped = [s for s, k in zip(steps, keep, strict=True) if not k]
    kept = [s for s, k in zip(steps, keep, strict=True) if k]
    return kept, res[torch.tensor(keep, dtype=torch.bool)], dropped


def _share(bands, v: torch.Tensor) -> float:
    e = bands(v.unsqueeze(0))[0]
    total = float(e.sum())
    return float(e[0]) / total if total > 0 else float("nan")


def measure(ev: Evidence, scene) -> None:
    """Band errors per step and the low-frequency shares of the excess and the descent."""
    ctx = ev.context
    replay = scene.require_replay()
    first = scene.window.steps[0] if scene.window.steps else None
    if first is None or ctx.onset not in {i.step for i in scene.run.snapshots}:
        raise Skip("the onset batch was not captured")
    last = scene.window.steps[-1]
    steps = [i.step for i in scene.run.snapshots if first <= i.step <= last]
    batch = scene.batch(ctx.onset, max_samples=2048)
    x, y = batch[replay.input_key], batch[replay.target_key]
    _require_float(x)
    if x.dim() == 2 and x.shape[1] == 1 and ctx.task.get("grid") == "uniform-1d":
        order = torch.argsort(x[:, 0])
        x, y = x[order], y[order]
    n = x.shape[0]

    def residual(step):
        with torch.no_grad():
            out = replay.outputs(scene.params(step), x)
        return (n * loss_residual(lambda o: replay.loss_fn(o, y), out)).reshape(n, -1)

    steps, res, dropped = _finite(steps, torch.stack([residual(s) for s in steps]))  # (T, n, c)
    pre = [i for i, s in enumerate(steps) if s < ctx.onset]
    if not pre:
        raise Skip("no captured step before onset to compare against")
    losses = res.pow(2).flatten(1).mean(dim=1)
    after = [i for i, s in enumerate(steps) if s >= ctx.onset]
    if not after:
        raise Skip(f"every captured step from onset on has a non-finite residual "
                   f"({len(dropped)} step(s) from {dropped[0] if dropped else '?'}): no band split "
                   "past a NaN")
    peak_i = max(after, key=lambda i: float(losses[i]))
    if peak_i + 1 >= len(steps):
        raise Skip("no captured step after the peak")
    bands, cutoff, is_dft = _bands(scene, x, n)
    ref_i = pre[-1]
    excess, descent = res[peak_i] - res[ref_i], res[peak_i] - res[peak_i + 1]
    regression = y.is_floating_point() and y.numel() == res[0].numel()
    target = bands((y.reshape(n, -1) if regression else res[ref_i]).unsqueeze(0))[0]
    energies = bands(res)
    errors = (energies / target.clamp_min(1e-30)).sqrt()
    for i, s in enumerate(steps):
        ev.add_many(s, "frequency", {"e_low": float(errors[i, 0]), "e_high": float(errors[i, 1])})
    rec = recovery_steps(errors, peak=peak_i, baseline_end=len(pre), factor=RECOVERY_FACTOR)
    peak_step = steps[peak_i]
    row = {"low_share_excess": _share(bands, excess), "low_share_descent": _share(bands, descent),
           "freq_cutoff": cutoff, "freq_method_dft": float(is_dft), "freq_n": n,
           "descent_to_step": steps[peak_i + 1], "reference_step": steps[ref_i]}
    for band, off in zip(("recovery_low", "recovery_high"), rec, strict=True):
        if off is not None:
            row[band] = steps[peak_i + off] - peak_step
    if not is_dft:
        xx = x.reshape(n, -1).double()
        med = float(torch.cdist(xx, xx).pow(2).median())
        for q in QS:
            e = band_energies(torch.stack([excess, descent]), x=xx, delta=q * med)
            row[f"low_share_excess@q{q:g}"] = float(e[0, 0] / e[0].sum())
            row[f"low_share_descent@q{q:g}"] = float(e[1, 0] / e[1].sum())
    ev.add_many(peak_step, "frequency", row)
