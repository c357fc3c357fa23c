"""`whatif(run, spike, changes)`: replay a spike's window from its earliest pre-onset snapshot,
first without a change (the self-check), then once per change, and say what each did."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from forensics.whatif.changes import NONE, Change, ChangeError, parse_change
from forensics.whatif.outcome import GONE_RATIO, baseline, outcome

# The no-change replay reproduces the run when every step's loss and every later snapshot's
# weights are within this relative distance of the recording (rationale: replaying the same
# float32 ops on the same device is exact up to reordering; the replay uses the recorded CPU
# thread count (whatif/threads.py), as another count drifts past 1e-4 on a transformer within a few
# steps, while a missing input — dropout, clipping, a reset — moves them by far more).
TOLERANCE = 1e-4


@dataclass
class ChangeResult:
    """One counterfactual. losses: the replayed training loss per step (None where skipped);
    curve: what peak_ratio is measured on ("loss", or "reference" for a probe-watching run)."""

    change: str
    peak_ratio: float
    recorded_peak_ratio: float
    spike_gone: bool
    recover_steps: int | None
    losses: list
    reference: list | None = None
    rule: str | None = None


@dataclass
class WhatIf:
    """The answer for one spike. reproduced: replay_error ≤ tolerance; when False, `diagnosis`
    says what is missing and `changes` is empty (no counterfactual is claimed)."""

    run: str
    spike_id: int
    reproduced: bool
    replay_error: float
    tolerance: float
    steps: list[int]
    recorded_losses: list
    replay_losses: list = field(default_factory=list)
    recorded_curve: list = field(default_factory=list)
    baseline: float | None = None
    spike_visible: bool = True
    curve: str = "loss"
    criterion: str = ""
    diagnosis: str = ""
    notes: list[str] = field(default_factory=list)
    changes: list[ChangeResult] = field(default_factory=list)

    def to_json(self) -> dict:
        """The JSON object of `forensics whatif --format json` (non-finite numbers as strings)."""
        from forensics.rundir.jsonsafe import jsonsafe

        return jsonsafe(asdict(self))


def whatif(run, spike: int, changes=None, model=None, *, device: str | None = "cpu",
           allow_import: bool = False, tolerance: float = TOLERANCE,
           gone_ratio: float = GONE_RATIO) -> WhatIf:
    """Replay spike `spike` of `run` (a path or an open `Run`) without a change, then with each
    of `changes` (texts like "beta2=0.95", "lr=x0.5", "skip_batch=400", or `Change`s; None: the
    hints of the spike's fired rules, which needs the run analyzed).

    model: the live model to replay (copied, never changed); default: rebuilt from run.json
        (trusted factories only unless allow_import). The optimizer class is resolved among
        torch.optim's own classes only, unless allow_import.
    Returns a `WhatIf`; when the no-change replay is off the recording by more than
    `tolerance`, `reproduced` is False, `diagnosis` says why, and no change is replayed.

    Raises:
        KeyError: no such spike. ChangeError (ValueError): a change that does not parse or apply.
        ValueError: nothing to replay (no snapshots, no batch before the peak, not analyzed and
            no changes given). PermissionError: code would have to be imported without consent.
        CorruptFileError (a ValueError): a snapshot the window needs is unreadable (named).
    """
    from forensics.replay import spike_window
    from forensics.rundir.reader import Run, open_run
    from forensics.whatif.defaults import default_changes
    from forensics.whatif.threads import pinned
    from forensics.whatif.trace import recorded_clip, reference_curve, replay

    run = run if isinstance(run, Run) else open_run(Path(run))
    window = spike_window(run, spike)
    notes = list(window.notes)
    if not window.reaches_peak:
        _raise_if_unreadable(run, window)
        raise ValueError(f"{run.path}: spike {spike}: the batches of the window stop at step "
                         f"{window.steps[-1]}, "
                         f"before the peak ({window.spike.peak}); {' '.join(window.notes)}")
    rules: list = []
    if changes is None:
        texts, rules = default_changes(run, window.spike)
        if not texts:
            notes.append("no fired rule of this spike declares a counterfactual: only the self-check ran")
        changes = texts
    parsed = [c if isinstance(c, Change) else parse_change(c) for c in changes]
    setup = _setup(run, window, model, device, allow_import, notes)
    setup.clip = recorded_clip(run, window, setup.notes)
    replay = pinned(replay, run.manifest, setup.device, setup.notes)
    check = replay(setup, NONE, check=True)
    errors = [e for e in check.loss_errors + check.weight_errors if not math.isnan(e)]
    err = max(errors) if errors else 0.0
    metas_loss = [_recorded_loss(window, t) for t in window.steps]
    result = WhatIf(str(run.run_id), spike, err <= tolerance, err, tolerance, list(window.steps), metas_loss,
                    replay_losses=check.losses,
                    curve="reference" if setup.reference else "loss",
                    criterion=_criterion(setup, gone_ratio),
                    notes=setup.notes)
    if not result.reproduced:
        result.diagnosis = _diagnose(setup, check, tolerance)
        return result
    onset = window.spike.onset

    outliers = _outliers(check, setup.notes) if setup.reference else set()

    def curves(trace, skips):
        return reference_curve(trace.per_batch, skips | outliers) if setup.reference else trace.losses

    result.recorded_curve = curves(check, set()) if setup.reference else metas_loss
    result.baseline = baseline(check.steps, result.recorded_curve, onset)
    judge = _judge(run, setup, onset, gone_ratio)
    seen = judge(check.steps, result.recorded_curve, result.baseline)
    visible = [not seen.spike_gone]
    for i, change in enumerate(parsed):
        tr = replay(setup, change)
        rec_curve = curves(check, change.skips) if setup.reference else metas_loss
        base = baseline(check.steps, rec_curve, onset)
        rec = judge(check.steps, rec_curve, base)
        out = judge(tr.steps, curves(tr, change.skips), base)
        visible.append(not rec.spike_gone)  # judged on the curve this change is measured on
        gone = out.spike_gone or (bool(setup.reference) and _excess_removed(out.peak_ratio, rec.peak_ratio))
        result.changes.append(ChangeResult(change.text, out.peak_ratio, rec.peak_ratio,
                                           gone and not rec.spike_gone,
                                           out.recover_steps, tr.losses,
                                           curves(tr, change.skips) if setup.reference else None,
                                           rules[i] if i < len(rules) else None))
    result.spike_visible = any(visible)
    if not result.spike_visible:
        why = (f"peak ×{seen.peak_ratio:.3g} < {gone_ratio:g}" if setup.reference else
               f"peak ×{seen.peak_ratio:.3g}, but the run's detector flags no spike on it")
        result.notes.append(f"the spike is not visible on the replayed {result.curve} curve ({why}): no "
                            "change can be judged to remove it")
    return result


def _judge(run, setup, onset, gone_ratio):
    """(steps, curve, baseline) -> Outcome: the run's own detector on the training loss, or the
    ratio criterion on the reference loss (no recorded history exists for it)."""
    from forensics.whatif.outcome import DetectorJudge

    if setup.reference:
        return lambda steps, curve, base: outcome(steps, curve, onset, base, gone_ratio)
    table = run.steps.select(["step", "loss"]).to_pydict()
    config = {**(run.manifest.get("detector") or {}), "signal": "loss"}
    return DetectorJudge((table["step"], table["loss"]), setup.window.start, onset, config)


# A batch whose loss at the window's first weights is this many times the median of the reference
# batches is left out of the reference (rationale: the data rule's own outlier test; a corrupted batch
# would otherwise dominate the mean and hide the spike it caused).
OUTLIER_RATIO = 10.0


def _outliers(check, notes) -> set[int]:
    import statistics

    first = check.per_batch[0]
    med = statistics.median(first.values())
    out = {t for t, v in first.items() if not math.isfinite(v) or v > OUTLIER_RATIO * med}
    if out:
        notes.append(f"batch(es) {sorted(out)} left out of the reference: loss at the first weights above "
                     f"{OUTLIER_RATIO:g}× the median of the reference batches")
    return out


# The reference loss (a mean over 16 recorded batches) wobbles by tens of percent around a low
# baseline: a change that removes at least this share of the recorded peak's excess over the
# baseline removes the spike even when the wobble crosses GONE_RATIO (rationale: the sample runs'
# spikes are ×2.8 to ×1900; a tenth of the excess left is within the pre-onset wobble).
REMOVED_SHARE = 0.9


def _excess_removed(peak_ratio: float, recorded_peak_ratio: float) -> bool:
    """Whether the change left at most 1 − REMOVED_SHARE of the recorded peak's excess over 1."""
    if not (math.isfinite(peak_ratio) and math.isfinite(recorded_peak_ratio)) or recorded_peak_ratio <= 1:
        return False
    return peak_ratio - 1 <= (1 - REMOVED_SHARE) * (recorded_peak_ratio - 1)


def _criterion(setup, gone_ratio: float) -> str:
    if setup.reference:
        return (f"spike_gone: the reference loss stays below {gone_ratio:g}× the pre-onset baseline from "
                f"the onset on, or the change removes ≥ {REMOVED_SHARE:.0%} of the recorded peak's excess "
                "over that baseline")
    return ("spike_gone: the run's own detector (run.json), fed the recorded losses before the window "
            "and then the replayed ones, flags no spike in the window")


def _recorded_loss(window, t) -> float:
    from forensics.rundir.snapshots import read_meta

    v = read_meta(window.snapshots[t].path).get("loss")
    return float(v) if v is not None else math.nan


def _setup(run, window, model, device, allow_import, notes):
    from forensics.analyzer.replay import Replay
    from forensics.replay import resolve_optimizer_class
    from forensics.whatif.trace import Setup

    dev = torch.device(device or "cpu")
    base = Replay.from_run(run, model=copy.deepcopy(model) if model is not None else None, device=dev,
                           allow_import=allow_import)
    template = base.model
    dtype = next(iter(window.snapshots[window.start].load("cpu", include=("param",)).params.values())).dtype
    template = template.to(dtype=dtype)
    opt = run.info.optimizer
    if opt is None:
        raise ValueError(f"{run.path}/run.json records no optimizer: nothing to rebuild")
    cls = resolve_optimizer_class(opt.class_path, allow_import=allow_import)
    from forensics.whatif.trace import reference_steps

    # the spike's own signal decides ("auto" watches the probe once one exists)
    signal = (run.manifest.get("detector") or {}).get("signal", "loss")
    by_probe = getattr(window.spike, "signal", "loss") == "probe" or signal in ("probe", "both")
    ref = reference_steps(window) if by_probe else []
    if ref:
        notes.append(f"the detector watched a probe batch, which the recording does not hold: the spike is "
                     f"measured on the reference loss, the mean loss of {len(ref)} of the window's recorded "
                     f"batches at each step's weights (a skipped or outlier batch left out)")
    keys = (base.input_key, base.target_key)
    return Setup(run, window, lambda: copy.deepcopy(template), base.loss_fn, keys, dev, cls, reference=ref,
                 notes=notes)


def _diagnose(setup, check, tolerance) -> str:
    """Why the no-change replay is off: where it first diverged and the inputs a replay lacks."""
    steps = check.steps
    first = next((t for t, a, b in zip(steps, check.loss_errors, check.weight_errors, strict=True)
                  if a > tolerance or (not math.isnan(b) and b > tolerance)), steps[0])
    i = steps.index(first)
    what = (f"the loss of step {first} is off by {check.loss_errors[i]:.3g} (relative)"
            if check.loss_errors[i] > tolerance else
            f"the weights before step {first} are off by {check.weight_errors[i]:.3g} (relative)")
    causes = []
    model = setup.make_model()
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        causes.append("the model has dropout, and the dropout RNG state is not recorded")
    if any(True for _ in model.buffers()):
        causes.append("the model has buffers (e.g. BatchNorm statistics), which snapshots do not record")
    if any("grad_clipped is 'unknown'" in n for n in setup.notes):
        causes.append("the run did not say whether it clipped gradients")
    from forensics.whatif.threads import thread_cause

    threads = thread_cause(setup.run.manifest, setup.device)
    if threads:
        causes.append(threads)
    recorded_on = str(setup.run.manifest.get("device") or "")
    kind = recorded_on.split(":")[0]
    if kind and kind != setup.device.type:
        causes.append(f"the run was recorded on {recorded_on} and replayed on {setup.device}: other kernels "
                      f"round differently (replay with --device {kind})")
    if first == steps[0]:
        causes.append("the first step already differs: the rebuilt model or loss is not the one trained "
                      "(factory, kwargs, loss or batch keys)")
    causes = causes or ["non-determinism or a hardware fault (nothing the replay knows of is missing)"]
    return (f"this spike does not reproduce from its snapshot: {what}, above the tolerance {tolerance:g}; "
            f"possible causes: {'; '.join(causes)}")


__all__ = ["TOLERANCE", "ChangeError", "ChangeResult", "WhatIf", "whatif"]


def _raise_if_unreadable(run, window) -> None:
    """CorruptFileError naming the first snapshot file the window lacks because the reader
    skipped it (truncated, corrupt, digest mismatch): a broken file, not a recording choice."""
    from forensics.rundir.format import CorruptFileError

    for step in range(window.steps[-1] + 1, window.spike.peak + 1):
        bad = run.unreadable_snapshot(step)
        if bad:
            raise CorruptFileError(bad[0], f"unreadable ({bad[1]}); the replay of spike "
                                           f"{window.spike.spike_id} needs this step's snapshot")
