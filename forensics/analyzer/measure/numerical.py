"""Engine `numerical`: counts non-finite values in the loss, gradients, weights and moments.

Reads the recorded per-step losses from `steps/` over the whole spike and every selected
snapshot's tensors; needs no model. To name where a NaN/Inf started, it also scans every
captured snapshot from as far before onset as the spike's own snapshots reach (the recorder's
context span and dense ring; not before an earlier spike's end; at most `MAX_SCAN`, in step
order), when anything in the spike is non-finite, for the first one holding a non-finite tensor or
loss, and records each such tensor there as
`first_nonfinite@<kind>:<name>` (kind: state/<moment>, param, batch, grad; the value is its
count of non-finite values) with `loss_finite_at_first`, whether that step's recorded loss
was still finite.

float16 with a GradScaler (steps/ `amp_skipped`, `loss_scale`): a step the scaler skipped with
a finite loss has inf/NaN gradients by design when the scale is too high: the scaler halves
it and goes on, θ untouched (dynamic loss scaling; Micikevicius et al. 2018, "Mixed Precision
Training", arXiv 1710.03740, §3.2). Such an *ordinary skip* (its calibration from the initial
2¹⁶ before its first successful step, and any later finite-loss skip) is counted apart
(`nonfinite_grad_skipped`) and never taken as the origin; a skip whose loss is non-finite is
not ordinary (the forward pass overflowed, which no scale prevents). At the first step found
non-finite otherwise, with the model rebuilt, the forward
pass is replayed with a hook on every module (`_overflow`): the first module whose output
passes the float16 maximum 65504 is named (`fp16_overflow@<module>`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure._overflow import FP16_MAX, first_overflow
from forensics.analyzer.measure._steps import column, spike_range
from forensics.math.finite import nonfinite_count

MAX_SCAN = 64
LEAD = 32  # runs without recorder settings: the origin is looked for from this many steps before onset
WITHOUT_SNAPSHOTS = True  # the recorded losses in steps/ still say whether the spike went non-finite
SCALE_FLOOR = 1.0  # the smallest loss scale of DeepSpeed's and Megatron-LM's loss scalers (min_loss_scale);
# the rule reports whether the scale had reached it when float16 overflowed
FORWARD_ONLY = True  # forward passes without gradients: the default attention kernel
METRICS = {
    "nonfinite_loss": ("count", "non-finite loss: per snapshot 0/1, and 1 at every step of steps/ "
                       "in the spike whose recorded loss is NaN/Inf"),
    "nonfinite_grad": ("count", "non-finite values among the snapshot's gradients (not at an ordinary "
                       "GradScaler skip)"),
    "nonfinite_grad_skipped": ("count", "non-finite gradient values at a step the GradScaler skipped "
                               "as ordinary loss scaling (see the engine's doc)"),
    "nonfinite_param": ("count", "non-finite values among the snapshot's weights"),
    "nonfinite_state": ("count", "non-finite values among the snapshot's optimizer moments"),
    "first_nonfinite@*": ("count", "at the first captured step with a non-finite tensor: its "
                          "non-finite values, one metric per tensor, `<kind>:<name>` with kind "
                          "state/<moment>, param, batch or grad"),
    "loss_finite_at_first": ("0/1", "1 when the recorded loss of that first step was still finite"),
    "amp_skipped": ("0/1", "steps/ amp_skipped over the spike's range: the GradScaler found inf/NaN "
                    "gradients and skipped optimizer.step()"),
    "loss_scale": ("scale", "steps/ loss_scale over the spike's range, where it changed (and its ends)"),
    "amp_calibration_skips": ("count", "at onset: steps the scaler skipped before its first successful step"),
    "amp_first_ok": ("step", "at onset: the scaler's first successful (not skipped) step"),
    "fp16_overflow@*": ("|output|", "at the replayed first non-finite step: the max |output| of the first "
                        "module whose output passes 65504, `fp16_overflow@<module name>`"),
    "fp16_overflow_modules": ("count", "there: modules whose output passes 65504"),
    "fp16_max_output": ("|output|", "there, and at the last captured step before it: the largest "
                        "|output| of any module (float32 replay)"),
    "fp16_output_layer": ("0/1", "there: 1 when that first module's output is the model's output"),
}


class _Amp:
    """The run's GradScaler columns: which steps it skipped, the scale, its first good step."""

    def __init__(self, run):
        # whole-run columns: a lost chunk only thins them (the spike's own range is checked in measure)
        steps, skipped = column(run, "amp_skipped", check=False)
        _, self.scale = column(run, "loss_scale", check=False)
        _, self.loss = column(run, "loss", check=False)
        self.steps, self.skipped = steps, skipped == 1
        seen = np.isfinite(skipped)
        ok = steps[seen & ~self.skipped]
        self.present = bool(seen.any())
        self.first_ok = int(ok.min()) if ok.size else None
        self._at = {int(s): i for i, s in enumerate(steps)}

    def ordinary(self, step: int) -> bool:
        """Whether `step` is an ordinary skip (see the module doc)."""
        i = self._at.get(step)
        return bool(i is not None and self.skipped[i] and np.isfinite(self.loss[i]))

    def measure(self, ev: Evidence, lo: int, hi: int) -> None:
        keep = (self.steps >= lo) & (self.steps <= hi)
        prev = None
        idx = np.flatnonzero(keep)
        for j, i in enumerate(idx):
            s = int(self.steps[i])
            ev.add(s, "numerical", "amp_skipped", float(self.skipped[i]))
            scale = float(self.scale[i])
            nxt = float(self.scale[idx[j + 1]]) if j + 1 < len(idx) else None
            if math.isfinite(scale) and (prev != scale or nxt != scale or j in (0, len(idx) - 1)):
                ev.add(s, "numerical", "loss_scale", scale)
            prev = scale
        ctx = ev.context
        ev.add(ctx.onset, "numerical", "amp_calibration_skips",
               float(np.sum(self.skipped & (self.steps < (self.first_ok if self.first_ok is not None
                                                          else self.steps.max() + 1)))))
        if self.first_ok is not None:
            ev.add(ctx.onset, "numerical", "amp_first_ok", self.first_ok)


def _count(tensors) -> int:
    return sum(nonfinite_count(t) for t in tensors)


def _nonfinite_tensors(snap) -> dict[str, float]:
    """`<kind>:<name>` -> non-finite count for each tensor of the snapshot that has any, in the
    order a step makes them: moments and weights (from the previous update), the batch, then
    the gradients of this step."""
    groups = [(f"state/{k}", d) for k, d in snap.state.items()] + \
        [("param", snap.params), ("batch", snap.batch), ("grad", snap.grads)]
    out = {}
    for kind, tensors in groups:
        for name, t in tensors.items():
            n = nonfinite_count(t)
            if n:
                out[f"{kind}:{name}"] = float(n)
    return out


def _lead(scene) -> int:
    """How far before onset the spike's own snapshots reach: the recorder's context span plus its
    dense ring (run.json), or `LEAD` for a run that does not say."""
    rec = (getattr(scene.run, "manifest", None) or {}).get("recorder") or {}
    try:
        return int(rec.get("context_span", 0)) + int(rec.get("ring_size", 0)) * int(rec.get("stride", 1)) \
            or LEAD
    except (TypeError, ValueError):
        return LEAD


def _since(ev: Evidence, scene) -> int:
    """The first step this spike's origin may lie at: as far before onset as its own snapshots
    reach (`_lead`), but after the end of an earlier recorded spike (its non-finite values are
    that spike's)."""
    onset = ev.context.onset
    ends = [s.end for s in (getattr(scene.run, "spikes", None) or [])
            if s.end is not None and s.end < onset]
    return max([onset - _lead(scene)] + [e + 1 for e in ends])


def _first_origin(ev: Evidence, scene, amp: _Amp) -> int | None:
    """The first captured snapshot of the window with a non-finite tensor (not an ordinary
    scaler skip), named tensor by tensor; its step, or None."""
    if not scene.window.steps:
        return None
    lo, hi = _since(ev, scene), scene.window.steps[-1]  # every captured step, not only the selected
    steps = sorted({i.step for i in scene.run.snapshots if lo <= i.step <= hi and not amp.ordinary(i.step)})
    for step in steps[:MAX_SCAN]:
        snap = scene.snapshot(step)
        found = _nonfinite_tensors(snap)
        loss = float(snap.meta.get("loss", float("nan")))
        if found or not math.isfinite(loss):
            ev.add_many(step, "numerical", {**{f"first_nonfinite@{k}": v for k, v in found.items()},
                                            "loss_finite_at_first": float(math.isfinite(loss))})
            return step
    return None


def _replay(ev: Evidence, scene, step: int) -> dict | None:
    """Replay `step`'s forward pass: the first module past the float16 maximum (None when the
    weights are already non-finite, or the replay failed: noted as the engine's failure)."""
    snap = scene.snapshot(step)
    if any(nonfinite_count(t) for t in snap.params.values()):
        return None  # weights already non-finite: every output is, whatever the precision
    try:
        x = scene.replay.batch(snap)[scene.replay.input_key]
        found = first_overflow(scene.replay, scene.params(step), x)
    except Exception as exc:  # noqa: BLE001 - the counts above still stand
        ev.fail("numerical", f"float16 overflow replay at step {step}: {type(exc).__name__}: {exc}")
        return None
    ev.add(step, "numerical", "fp16_max_output", found["max_output"])
    return found


def _fp16_overflow(ev: Evidence, scene, step: int, amp: _Amp) -> None:
    """At `step`, the first module past the float16 maximum; at the last captured step before it
    (not an ordinary skip), how large the outputs were (`fp16_max_output`): the margin."""
    if scene.replay is None:
        why = scene.replay_error or "no model"
        ev.skip("numerical", f"float16 overflow not looked for at step {step}: {why}")
        return
    found = _replay(ev, scene, step)
    if found is None:
        return
    ev.add(step, "numerical", "fp16_overflow_modules", found["over"])
    if found["module"] is not None:
        ev.add(step, "numerical", f"fp16_overflow@{found['module']}", found["value"])
        ev.add(step, "numerical", "fp16_output_layer", float(found["is_output"]))
    before = [i.step for i in scene.run.snapshots if _since(ev, scene) <= i.step < step
              and not amp.ordinary(i.step)]
    if before:
        _replay(ev, scene, max(before))


def measure(ev: Evidence, scene) -> None:
    """Non-finite counts per selected snapshot, non-finite recorded losses in the spike, the
    scaler's columns, and (a float16 run) the first module past the float16 maximum."""
    ctx = ev.context
    amp = _Amp(scene.run)
    steps = scene.run.steps
    if steps is not None and steps.num_rows:
        s = np.asarray(steps.column("step").to_numpy(zero_copy_only=False))
        v = np.asarray(steps.column("loss").to_numpy(zero_copy_only=False), dtype=float)
        hi = ctx.end if ctx.end is not None else s.max()
        for step, loss in zip(s[(s >= ctx.onset) & (s <= hi)], v[(s >= ctx.onset) & (s <= hi)], strict=True):
            if not math.isfinite(loss):
                ev.add(int(step), "numerical", "nonfinite_loss", 1.0)
    if amp.present:
        amp.measure(ev, *spike_range(ctx))
    seen = ctx.nonfinite
    for step in scene.window.steps:
        snap = scene.snapshot(step)
        states = [t for d in snap.state.values() for t in d.values()]
        grads = "nonfinite_grad_skipped" if amp.ordinary(step) else "nonfinite_grad"
        counts = {grads: _count(snap.grads.values()), "nonfinite_param": _count(snap.params.values()),
                  "nonfinite_state": _count(states),
                  "nonfinite_loss": float(not math.isfinite(float(snap.meta.get("loss", 0.0))))}
        ev.add_many(step, "numerical", counts)
        seen = seen or any(v for k, v in counts.items() if k != "nonfinite_grad_skipped")
    # where it started: only when something is non-finite (a finite spike loads no other snapshot)
    first = _first_origin(ev, scene, amp) if seen else None
    fp16 = amp.present or any(t.dtype == torch.float16 for t in
                              (scene.snapshot(first).params.values() if first is not None else ()))
    if first is not None and fp16:
        _fp16_overflow(ev, scene, first, amp)


__all__ = ["FP16_MAX", "SCALE_FLOOR", "measure"]
