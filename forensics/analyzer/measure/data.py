"""Engine `data`: the spike batch against the distribution of recorded batches, all at the onset weights.

Evaluates L(θ_onset; batch_s) for the onset batch and every other recorded batch within 64
steps (at most `MAX_NEIGHBORS`, nearest first): the same weights for all, so only the batches
differ. The onset batch is placed in that distribution by a robust z of its log-loss
(median and MAD of the neighbours' log-losses), and the neighbours themselves are checked for
batches as far out (a heavy-tailed data distribution has them; one bad batch does not).
Beside the loss it records what tells the causes of a bad batch apart: its rows against the
run's usual batch size, non-finite inputs, inputs outside the neighbours' range, the period
at which the run's spikes recur (e.g. one short batch per epoch), and, when the snapshot
says how many equal micro-batches it concatenates (`micro_batches` in its meta), the worst
micro-batch. Full-batch runs have identical batches: `batches_identical` says which regime
the run is in.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure import Skip

MAX_NEIGHBORS = 32
HISTORY_WINDOW = 32  # steps of the rolling median a recorded loss is compared with
HISTORY_RATIO = 3.0  # the least jump over the rolling median counted as an excursion
MAD_FLOOR = 0.01  # log-loss units: identical batches (full batch) give MAD 0
Z_FENCE = 4.0     # the fence the neighbours are checked against (the data rule's min_robust_z)
FORWARD_ONLY = True  # forward passes without gradients: the default attention kernel
METRICS = {
    "batch_loss": ("loss", "at the onset weights: the onset batch's loss"),
    "neighbor_loss_median": ("loss", f"at the onset weights: the median loss of up to "
                             f"{MAX_NEIGHBORS} other recorded batches within 64 steps"),
    "neighbor_count": ("count", "other batches evaluated"),
    "batch_loss_ratio": ("1", "batch_loss / neighbor_loss_median"),
    "batch_robust_z": ("1", "(log batch_loss − median log L_o)/(1.4826·MAD log L_o) over the other "
                       f"batches' losses L_o (MAD floored at {MAD_FLOOR})"),
    "neighbor_outliers": ("count", f"other batches of the usual size as far out (≥ max({HISTORY_RATIO:g}, "
                          f"√batch_loss_ratio)× the others' median, robust z ≥ {Z_FENCE:g}): > 0 "
                          "means the data is heavy-tailed at these weights"),
    "batches_identical": ("0/1", "1 when every other batch equals the onset batch (one fixed, full "
                          "batch), 0 when they differ (minibatches)"),
    "batch_rows": ("count", "rows of the onset batch"),
    "usual_rows": ("count", "median rows of the other recorded batches"),
    "nonfinite_inputs": ("count", "non-finite values in the onset batch's floating tensors"),
    "out_of_range_share": ("1", "share of the onset batch's input values outside [min, max] of the "
                           "other batches' inputs"),
    "recurrence_period": ("steps", "the gcd of the gaps between the onsets of the run's spikes whose "
                          "onset batch has this batch's rows, when ≥ 3 and ≥ 4 steps: they recur "
                          "at multiples of it (e.g. once per epoch)"),
    "onset_jump_ratio": ("1", f"the onset's recorded loss over the median of the {HISTORY_WINDOW} "
                         "recorded losses before it"),
    "history_excursions": ("count", f"steps of steps/ outside this spike whose recorded loss jumped "
                           f"as far: ≥ max({HISTORY_RATIO:g}, √onset_jump_ratio) × the median of the "
                           f"{HISTORY_WINDOW} steps before it"),
    "history_steps": ("count", "steps of steps/ those excursions were counted over"),
    "suspect_step": ("step", "the batch judged: the onset's, or for a spike the probe opened the step "
                     "before's when it is farther out (its update shows in the probe one step later); "
                     "the other metrics are that batch's, at that step's weights"),
    "micro_batches": ("count", "equal micro-batches concatenated in the onset batch (snapshot meta)"),
    "worst_micro_batch": ("index", "the micro-batch with the highest loss at the onset weights"),
    "worst_micro_ratio": ("1", "its loss over the median of the other micro-batches"),
}


def robust_z(value: float, others: np.ndarray) -> float:
    """(log value − median log others)/(1.4826·MAD log others), MAD floored at MAD_FLOOR;
    nan when `value` or all of `others` are not positive and finite."""
    logs = np.log(others[np.isfinite(others) & (others > 0)])
    if logs.size == 0 or not (math.isfinite(value) and value > 0):
        return float("nan")
    med = float(np.median(logs))
    mad = max(1.4826 * float(np.median(np.abs(logs - med))), MAD_FLOOR)
    return (math.log(value) - med) / mad


def recurrence_period(onsets, min_period: int = 4) -> int | None:
    """The common period of `onsets` (the gcd of their gaps) when there are ≥ 3 and it is at
    least `min_period` steps: the spikes recur at multiples of it (once per epoch, say)."""
    onsets = sorted(set(int(s) for s in onsets))
    if len(onsets) < 3:
        return None
    period = int(np.gcd.reduce(np.diff(onsets)))
    return period if period >= min_period else None


def jump_ratios(losses: np.ndarray, *, window: int = HISTORY_WINDOW) -> np.ndarray:
    """Each recorded loss (in step order) over the median of the finite losses of the `window`
    steps before it; NaN for the first `window` steps and for non-finite losses."""
    v = np.asarray(losses, dtype=float)
    out = np.full(v.shape, np.nan)
    if v.size <= window:
        return out
    from numpy.lib.stride_tricks import sliding_window_view

    finite = np.where(np.isfinite(v), v, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN window: no ratio there
        med = np.nanmedian(sliding_window_view(finite, window)[:-1], axis=1)
        out[window:] = finite[window:] / med
    return out


def _history(scene, ctx) -> dict:
    """How often the run's other steps jumped as far as this onset (half its log-excess)."""
    steps = scene.run.steps
    if steps is None or steps.num_rows <= HISTORY_WINDOW:
        return {}
    s = np.asarray(steps.column("step").to_numpy(zero_copy_only=False))
    v = np.asarray(steps.column("loss").to_numpy(zero_copy_only=False), dtype=float)
    order = np.argsort(s, kind="stable")
    s, ratios = s[order], jump_ratios(v[order])
    at = ratios[s == ctx.onset]
    if at.size == 0 or not np.isfinite(at[0]):
        return {}
    bar = max(HISTORY_RATIO, math.sqrt(max(float(at[0]), 1.0)))
    end = ctx.end if ctx.end is not None else ctx.peak
    outside = ((s < ctx.onset) | (s > end)) & np.isfinite(ratios)
    with np.errstate(invalid="ignore"):
        hits = outside & (ratios >= bar)
    return {"history_excursions": float(np.count_nonzero(hits)),
            "history_steps": float(np.count_nonzero(outside)), "onset_jump_ratio": float(at[0])}


def _same_kind_onsets(scene, rows: int) -> list[int]:
    """Onsets of the run's spikes whose captured onset batch has `rows` rows."""
    captured = {i.step for i in scene.run.snapshots}
    out = []
    for spike in scene.run.spikes or []:
        step = int(spike.onset)
        if step in captured:
            batch = scene.snapshot(step).batch
            if batch and next(iter(batch.values())).shape[0] == rows:
                out.append(step)
    return out


def _input_checks(own: dict, others: list[dict], key: str) -> dict:
    floats = [v for v in own.values() if v.is_floating_point()]
    row = {"nonfinite_inputs": float(sum(int((~torch.isfinite(v)).sum()) for v in floats))}
    x = own.get(key)
    ref = [b[key] for b in others if key in b]
    if x is not None and ref and x.numel():
        lo = min(float(r.min()) for r in ref)
        hi = max(float(r.max()) for r in ref)
        xf = x.double()
        row["out_of_range_share"] = float(((xf < lo) | (xf > hi) | ~torch.isfinite(xf)).double().mean())
    return row


def _micro(replay, params, batch, meta) -> dict:
    m = int(meta.get("micro_batches") or 0)
    rows = next(iter(batch.values())).shape[0]
    if m < 2 or rows % m:
        return {}
    size = rows // m
    with torch.no_grad():
        parts = [{k: v[i * size:(i + 1) * size] for k, v in batch.items()} for i in range(m)]
        losses = np.array([float(replay.loss(params, part)) for part in parts])
    worst = int(np.nanargmax(losses))
    rest = np.delete(losses, worst)
    return {"micro_batches": m, "worst_micro_batch": worst,
            "worst_micro_ratio": float(losses[worst] / np.median(rest)) if np.median(rest) > 0 else math.inf}


def measure(ev: Evidence, scene) -> None:
    """The onset batch's loss against the other recorded batches', at the onset weights. A spike
    the probe opened may come from the batch before: its update shows in the probe one step later
    (a bad batch before the loss window exists is seen so); that batch is judged too, at its own
    step's weights, and the farther out of the two is the suspect (`suspect_step`)."""
    ctx = ev.context
    replay = scene.require_replay()
    captured = {i.step for i in scene.run.snapshots}
    if ctx.onset not in captured:
        raise Skip(f"the onset step {ctx.onset} was not captured")
    rows = [_judge(scene, replay, ctx, ctx.onset, captured)]
    if ctx.signal == "probe" and ctx.onset - 1 in captured:
        rows.append(_judge(scene, replay, ctx, ctx.onset - 1, captured))
    z = lambda r: r.get("batch_robust_z", -math.inf) if r else -math.inf  # noqa: E731
    row = max(rows, key=lambda r: (not math.isnan(z(r)), z(r)))
    if row is None:
        raise Skip("no other batches were recorded near the onset")
    ev.add_many(ctx.onset, "data", {k: v for k, v in row.items() if v is None or not
                                    (isinstance(v, float) and math.isnan(v))})


def _judge(scene, replay, ctx, step: int, captured: set) -> dict | None:
    """The metrics of batch `step` against the other recorded batches within 64 steps, all at the
    weights of `step`; None when there are none."""
    others = sorted((s for s in captured if s != step and abs(s - step) <= 64),
                    key=lambda s: (abs(s - step), s))[:MAX_NEIGHBORS]
    if not others:
        return None
    params = scene.params(step)
    own_batch = scene.batch(step)
    other_batches = [scene.batch(s) for s in others]
    same = all(all(torch.equal(own_batch[k], b[k]) for k in own_batch if k in b and
                   own_batch[k].shape == b[k].shape) and
               all(own_batch[k].shape == b[k].shape for k in own_batch if k in b)
               for b in other_batches)
    with torch.no_grad():
        own = float(replay.loss(params, own_batch))
        losses = np.array([float(replay.loss(params, b)) for b in other_batches])
    median = float(np.median(losses))
    ratio = own / median if median > 0 else float("inf")
    raw_own, raw_others = scene.snapshot(step).batch, [scene.snapshot(s).batch for s in others]
    rows = lambda b: next(iter(b.values())).shape[0] if b else 0  # noqa: E731
    usual = float(np.median([rows(b) for b in raw_others]))
    # heavy tails are judged on ordinary batches (a short batch elsewhere is the same kind of
    # bad): as far out = z ≥ Z_FENCE and a jump over the others' median of at least
    # max(HISTORY_RATIO, √ratio), half the onset batch's log-jump
    bar = max(HISTORY_RATIO, math.sqrt(max(ratio, 1.0)))
    outliers = sum(robust_z(float(v), np.delete(losses, i)) >= Z_FENCE
                   and v >= bar * np.median(np.delete(losses, i))
                   for i, v in enumerate(losses) if rows(raw_others[i]) == usual)
    row = {"batch_loss": own, "neighbor_loss_median": median, "neighbor_count": len(losses),
           "batch_loss_ratio": ratio, "batch_robust_z": robust_z(own, losses),
           "neighbor_outliers": float(outliers), "batches_identical": float(same),
           "batch_rows": rows(raw_own), "usual_rows": usual, "suspect_step": float(step)}
    row.update(_input_checks(raw_own, raw_others, replay.input_key))
    period = recurrence_period(_same_kind_onsets(scene, rows(raw_own)))
    if period is not None:
        row["recurrence_period"] = period
    row.update(_history(scene, ctx))
    row.update(_micro(replay, params, own_batch, scene.snapshot(step).meta))
    return row
