"""Replay one spike window under one change (or none) and trace what it did: the loss of every
step, the reference loss when the run watches a probe, and — without a change — how far the
replay is from the recorded losses and weights."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch

from forensics.replay import (
    StepInput,
    build_optimizer,
    replay_steps,
    restore,
)
from forensics.replay.window import Window
from forensics.rundir.reader import Run
from forensics.whatif.changes import Change, ChangeError


@dataclass
class Trace:
    """One replay of a window. Lists run over `steps`; a skipped step's loss is None.

    loss_errors / weight_errors: per step, relative distance to the recording (no-change replay
    only; weight error is NaN at the start, where the replay is loaded from the snapshot).
    """

    change: Change
    steps: list[int]
    losses: list[float | None]
    per_batch: list[dict] | None = None  # per step: {reference batch step: loss at this step's weights}
    loss_errors: list[float] = field(default_factory=list)
    weight_errors: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)


@dataclass
class Setup:
    """What every replay of a window shares: the run, window, rebuilt model factory, loss, keys."""

    run: Run
    window: Window
    make_model: object  # () -> fresh nn.Module on the device
    loss_fn: object
    keys: tuple[str, str]
    device: torch.device
    optimizer_cls: type
    reference: list[int] = field(default_factory=list)  # steps whose batches form the reference set
    resets: dict | None = None  # recorded optimizer resets in the window (recorded_resets)
    clip: float | None = None
    notes: list[str] = field(default_factory=list)


def rel_error(a: float, b: float) -> float:
    """|a − b| / |b| (floored at 1e-30); 0 when both are the same non-finite value."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return 0.0 if (a == b or (math.isnan(a) and math.isnan(b))) else math.inf
    return abs(a - b) / max(abs(b), 1e-30)


def recorded_clip(run: Run, window: Window, notes: list[str]) -> float | None:
    """The max-norm the run clipped to, inferred from the window: on a step recorded as clipped
    the gradient the optimizer saw has exactly that norm (steps/ grad_norm). None when no step
    of the window was clipped."""
    from forensics.rundir.snapshots import read_meta

    flags = {t: read_meta(window.snapshots[t].path).get("grad_clipped") for t in window.steps}
    if any(v is None for v in flags.values()):
        notes.append("grad_clipped is 'unknown' on some steps (the run did not report it): the replay "
                     "assumes no gradient clipping")
    clipped = [t for t, v in flags.items() if v is True]
    if not clipped:
        return None
    table = run.steps.select(["step", "grad_norm"]).to_pydict()
    norms = dict(zip(table["step"], table["grad_norm"], strict=True))
    vals = [norms[t] for t in clipped if norms.get(t) is not None and math.isfinite(norms[t])]
    if not vals:
        raise ValueError("the run clipped gradients but recorded no finite grad_norm on clipped steps: "
                         "the clip threshold is unknown")
    c = statistics.median(vals)
    notes.append(f"the run clipped gradients on {len(clipped)} step(s) of the window: replayed with "
                 f"max-norm {c:.6g} (the recorded norm of a clipped gradient)")
    return c


def _state_of(snap) -> dict:
    return {k: v for k, v in snap.state.items()}


def _zeroed(state: dict) -> bool:
    """Every recorded optimizer state tensor is zero (what a cleared optimizer is recorded as)."""
    tensors = [v for per in state.values() for v in per.values()]
    return bool(tensors) and all(not bool(v.any()) for v in tensors)


def recorded_resets(setup: Setup) -> dict:
    """{step: (state, count, groups)} where the recorded optimizer state was reset inside the
    window: its step count went down, or its moments went from non-zero to all zero (a cleared
    optimizer; the recorder then falls back to its own step counter). Computed once per setup."""
    if setup.resets is not None:
        return setup.resets
    out, prev_count, prev_zero = {}, None, None
    for t in setup.window.steps:
        info = setup.window.snapshots[t]
        meta = _meta(info)
        state = _state_of(info.load(str(setup.device), include=("state",)))
        count, zero = meta.get("optimizer_step"), _zeroed(state)
        went_down = prev_count is not None and count is not None and count < prev_count + 1
        if t != setup.window.start and (went_down or (zero and prev_zero is False)):
            out[t] = ({} if zero else state, 0 if zero else count, meta["param_groups"])
        prev_count, prev_zero = count, zero
    setup.resets = out
    return out


def _reset_from(setup: Setup, change: Change, metas: dict) -> dict:
    """The recorded resets to replay; a change that restores the optimizer keeps the replayed state."""
    return {} if change.restores_optimizer else recorded_resets(setup)


def _start_state(setup: Setup, change: Change, start_snap) -> tuple[dict, int | None]:
    state, count = _state_of(start_snap), start_snap.meta.get("optimizer_step")
    if not change.restores_optimizer:
        return state, count
    if recorded_resets(setup):  # a reset inside the window: start as recorded, keep the state at the reset
        return state, count
    w = setup.window
    earlier = [s for s in setup.run.snapshots if s.step < w.start and not _zeroed(
        _state_of(s.load(str(setup.device), include=("state",))))] if _zeroed(state) else []
    if not earlier:
        raise ChangeError("restore_optimizer: the recorded optimizer state is never reset in or before this "
                          "window, so there is nothing to restore")
    src = earlier[-1].load(str(setup.device), include=("state",))
    setup.notes.append(f"restore_optimizer: optimizer state taken from step {src.step} (step count "
                       f"{src.meta.get('optimizer_step')}), the last one before the reset")
    return _state_of(src), src.meta.get("optimizer_step")


def _meta(info) -> dict:
    from forensics.rundir.snapshots import read_meta

    return read_meta(info.path)


def replay(setup: Setup, change: Change, *, check: bool = False) -> Trace:
    """Replay `setup.window` with `change` from its first snapshot; with `check`, also measure
    the distance of every step's loss and weights to the recording.

    Raises ChangeError when the change does not apply, ValueError when the snapshot and the
    rebuilt model disagree (a parameter missing or of another shape)."""
    w, dev = setup.window, str(setup.device)
    start = w.snapshots[w.start].load(dev)
    model = setup.make_model()
    metas = {t: (start.meta if t == w.start else _meta(w.snapshots[t])) for t in w.steps}
    state, count = _start_state(setup, change, start)
    opt = restore(model, start, setup.optimizer_cls, groups=change.apply_groups(start.meta["param_groups"]),
                  state=state, optimizer_step=count)
    named = dict(model.named_parameters())
    first = start.meta["param_groups"]
    resets = _reset_from(setup, change, metas)
    batches = {t: (start.batch if t == w.start else w.snapshots[t].load(dev, include=("batch",)).batch)
               for t in w.steps}
    batches = {t: {k: v.to(setup.device) for k, v in b.items()} for t, b in batches.items()}
    clip = change.clip if change.clip is not None else setup.clip
    inputs = [StepInput(t, batches[t], change.apply_groups(metas[t]["param_groups"], first), clip,
                        t in change.skips, resets.get(t)) for t in w.steps]
    unknown = change.skips - set(w.steps)
    if unknown:
        raise ChangeError(f"skip_batch={min(unknown)}: step not in the replayed window "
                          f"{w.start}..{w.steps[-1]}")
    ref_batches = {t: batches[t] for t in setup.reference}
    x_key, y_key = setup.keys

    def before(inp, model, optimizer):
        extra = {}
        if ref_batches:
            with torch.no_grad():
                extra["per_batch"] = {t: float(setup.loss_fn(model(b[x_key]), b[y_key]))
                                      for t, b in ref_batches.items()}
        if check:
            extra["weight_error"] = math.nan if inp.step == w.start else _weight_error(
                model, w.snapshots[inp.step].load(dev, include=("param",)).params)
        return extra

    def load_state(optimizer, st):
        state, count, groups = st
        fresh = build_optimizer(setup.optimizer_cls, named, change.apply_groups(groups, first), state, count)
        optimizer.load_state_dict(fresh.state_dict())

    outcomes = replay_steps(model, opt, setup.loss_fn, setup.keys, inputs, before=before,
                            load_state=load_state)
    trace = Trace(change, list(w.steps), [None if o.skipped else o.loss for o in outcomes],
                  [o.extra["per_batch"] for o in outcomes] if ref_batches else None,
                  grad_norms=[o.grad_norm for o in outcomes])
    if check:
        trace.loss_errors = [rel_error(o.loss, float(metas[o.step]["loss"])) for o in outcomes]
        trace.weight_errors = [o.extra["weight_error"] for o in outcomes]
    return trace


def _weight_error(model, recorded: dict) -> float:
    """‖θ_replay − θ_recorded‖ / ‖θ_recorded‖ over every parameter."""
    num = den = 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = recorded[name].to(p.device, p.dtype)
            same = (p == r) | (torch.isnan(p) & torch.isnan(r))  # equal non-finite values count as equal
            num += float(torch.sum(torch.where(same, 0.0, p - r) ** 2))
            den += float(torch.sum(torch.where(torch.isfinite(r), r, 0.0) ** 2))
    if not math.isfinite(num):
        return math.inf
    return math.sqrt(num) / max(math.sqrt(den), 1e-30)


def reference_curve(per_batch: list[dict], exclude: set[int]) -> list[float]:
    """Per step, the mean loss over the reference batches not in `exclude` (e.g. a skipped one)."""
    out = []
    for row in per_batch:
        vals = [v for t, v in row.items() if t not in exclude]
        out.append(sum(vals) / len(vals) if vals else math.nan)
    return out


def reference_steps(window: Window, most: int = 16) -> list[int]:
    """Up to `most` steps of the window, evenly spaced, whose batches form the reference set (a
    stand-in for a probe batch the recording does not hold); [] when every batch of the window is
    the same (full batch: the training loss is the objective)."""
    from forensics.rundir.snapshots import load_snapshot

    batches = [load_snapshot(window.snapshots[t].path, include=("batch",), verify=False).batch
               for t in window.steps]
    first = batches[0]
    same = all(b.keys() == first.keys() and all(torch.equal(b[k], first[k]) for k in b) for b in batches[1:])
    if same:
        return []
    n = len(window.steps)
    idx = sorted({round(i * (n - 1) / max(most - 1, 1)) for i in range(min(most, n))})
    return [window.steps[i] for i in idx]
