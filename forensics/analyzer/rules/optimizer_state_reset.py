"""Rule `optimizer_state_reset`: Adam restarted from an empty state shortly before the spike.

After its state is emptied (`optimizer.state.clear()`, a resume that restores the weights and
the schedule but not the moments, a fine-tune from trained weights) Adam's first update is
lr·m̂/√v̂ = lr·sign(g): every coordinate moves by ≈ lr, whatever its gradient, and v̂ is rebuilt
from one gradient (Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", arXiv
1412.6980, §2 and §3 on the bias correction). On trained weights that is a large, badly
preconditioned step.

Fires in-run when the optimizer's step counter went back (or the moments were found reset:
all zero, or v = (1 − β₂)·g² of one gradient) at a step r at most `max_lag` steps before onset,
unless the update at r was measured and ordinary; and at the start of a run whose first
weights are trained (σ_max of a weight matrix well past the random-matrix edge) while its
optimizer started empty (step counter 0).
"""

from __future__ import annotations

from forensics.analyzer.evidence import EvidenceView, Finding
from forensics.analyzer.plots import Lines, Row
from forensics.analyzer.rules._series import clip01, first, last, window
from forensics.analyzer.spec import Mechanism, Thresholds

RULE = "optimizer_state_reset"
HINT = ("restore the optimizer state together with the weights (optimizer.load_state_dict on "
        "resume); if it is lost, re-warm the lr after the resume")
ADAM = "Kingma & Ba 2015, \"Adam: A Method for Stochastic Optimization\", arXiv 1412.6980"
T = Thresholds(
    max_lag=(32, "rationale: v̂ averages only the t gradients since the reset, so the first tens of "
             "updates are mis-scaled; the field case's loss is back within 12 steps"),
    min_update_jump=(3.0, "rationale: ordinary updates stay within ×3 of the running median of the 50 "
                     "before them on the clean sample runs; the field case's fresh-state update is ×13"),
    min_lr_share=(0.5, "the first Adam update has |m̂/√v̂| = 1 on every coordinate with |g| ≫ ε (" + ADAM
                  + "); rationale: most coordinates (ordinary steps: ≈ 0%)"),
    min_v_share=(0.5, "v after the first update is (1 − β₂)·g² exactly (" + ADAM + "); rationale: most "
                 "coordinates (ordinary steps: ≈ 0%)"),
    min_spectral_ratio=(1.5, "i.i.d. init has σ_max → rms·(√m+√n) (Bai & Yin 1988, Ann. Probab. 16(4)); "
                        "rationale: simulated fresh matrices 8×8 to 256×256 stay below 1.1"),
)


def _hint(ev: EvidenceView, step: int, at_start: bool) -> str:
    """Restore the state; else warm the lr up, from a tenth of the run's lr, over v̂'s memory.
    The run's lr is the one before the reset (at a run start: the one at onset); when the lr at
    the reset is already below half of it, the run ramps already: advise starting lower."""
    before = last(ev, "lr_recorded", None, step - 1)
    now = last(ev, "lr_recorded", None, step)
    ref = before or last(ev, "lr_recorded", None, ev.context.onset)
    lr = ref[1] if ref else None
    beta2 = ev.context.betas[1] if ev.context.betas else 0.999
    steps = int(min(1000, round(1 / (1 - beta2)))) if beta2 < 1 else 1000
    if not lr:
        ramp = "re-warm the lr over ~1/(1−β₂) steps"
    elif now and now[1] < 0.5 * lr:
        ramp = (f"the lr already restarts at {now[1]:.3g} (of {lr:.3g}): start it lower or ramp "
                f"over more steps (β₂ = {beta2:g}: v̂ settles over ~{steps} updates)")
    else:
        ramp = (f"ramp the lr from {lr / 10:.3g} back to {lr:.3g} over ~{steps} steps (β₂ = {beta2:g}: "
                f"v̂ settles over ~1/(1−β₂) updates)")
    what = "load the optimizer state saved with these weights" if at_start else \
        "restore the optimizer state with the weights (optimizer.load_state_dict)"
    return f"{what}; if it is lost, {ramp}"


def _in_run(ev: EvidenceView, lo: int, hi: int, start):
    """(reset step, how it was seen) of the latest reset in [lo, hi] that is not the run's start:
    by the step counter when it went back; when it is recorded and never went back, none; else by
    the moments (empty, or v of one gradient) at a snapshot after one whose moments were not empty
    (a state that was emptied, not one that was never filled: AMP's skipped first steps leave it
    empty too)."""
    steps, _ = window(ev, "counter_before_reset", lo, hi)
    if steps.size:
        return int(steps[-1]), "counter"
    counted, _ = window(ev, "step_counter", lo, hi)
    if counted.size >= 2:  # the counter is the witness and it never went back: a huge gradient
        return None        # also makes v ≈ (1 − β₂)·g², so the moments alone do not say "reset"
    filled_steps, empty = ev.series("moments_empty")
    filled = filled_steps[empty == 0]
    found = []
    for metric, limit in (("moments_empty", 1.0), ("v_one_gradient_share", T.min_v_share)):
        steps, values = window(ev, metric, lo, hi)
        found += [int(s) for s, v in zip(steps, values, strict=True)
                  if v >= limit and (start is None or s > start[0]) and (filled < s).any()]
    return (max(found), "moments") if found else None


def judge(ev: EvidenceView) -> Finding:
    """A reset of Adam's state at most `max_lag` steps before onset, or trained weights at a
    run start with an empty state."""
    ctx = ev.context
    if ctx.optimizer != "adam":
        return Finding(RULE, "not_fired", 0.0,
                       "not an Adam run: a fresh state does not rescale the update to ≈ lr")
    lo = ctx.onset - T.max_lag
    start = first(ev, "run_start_counter")
    reset = _in_run(ev, lo, ctx.onset, start)
    if reset is not None:
        return _judge_in_run(ev, *reset)
    return _judge_start(ev, start)


def _judge_in_run(ev: EvidenceView, r: int, seen: str) -> Finding:
    ctx = ev.context
    evidence = {"reset_step": r, "seen_in": seen, "steps_before_onset": ctx.onset - r,
                "counter_before": ev.at("counter_before_reset", r),
                "counter_after": ev.at("counter_after_reset", r),
                "update_norm_jump": ev.at("update_norm_jump", r),
                "lr_sized_share": ev.at("lr_sized_share", r),
                "v_one_gradient_share": ev.at("v_one_gradient_share", r),
                "moments_empty": ev.at("moments_empty", r)}
    thresholds = {k: getattr(T, k) for k in ("max_lag", "min_update_jump", "min_lr_share", "min_v_share")}
    jump, share = evidence["update_norm_jump"], evidence["lr_sized_share"]
    big = [ok for ok in (jump is not None and jump >= T.min_update_jump,
                         share is not None and share >= T.min_lr_share)
           if jump is not None or share is not None]
    parts = []
    if evidence["counter_before"] is not None:
        after = evidence["counter_after"]
        parts.append(f"the step counter went {evidence['counter_before']:.0f} → "
                     f"{after:.0f}" if after is not None else "the step counter went back")
    if evidence["v_one_gradient_share"] is not None:
        parts.append(f"v̂ rebuilt from one gradient on {evidence['v_one_gradient_share']:.0%} of coordinates")
    if jump is not None:
        parts.append(f"update norm ×{jump:.3g} its running median")
    if share is not None:
        parts.append(f"{share:.0%} of coordinates moved by ≈ lr")
    said = "; ".join(parts) or "the moments were all zero"
    if big and not any(big):
        return Finding(RULE, "not_fired", 0.2,
                       f"optimizer state reset at step {r} ({said}), but its update was ordinary",
                       evidence=evidence, thresholds=thresholds)
    score = clip01(0.7 + 0.3 * any(big))
    return Finding(RULE, "fired", score,
                   f"optimizer state reset at step {r}, {ctx.onset - r} step(s) before onset: {said}",
                   _hint(ev, r, at_start=False), evidence=evidence, thresholds=thresholds)


def _judge_start(ev: EvidenceView, start) -> Finding:
    ctx = ev.context
    if start is None or ctx.onset - start[0] > T.max_lag:
        return Finding(RULE, "not_fired", 0.0,
                       f"the step counter and the moments run on in the {T.max_lag} steps before onset")
    s0 = start[0]
    ratio = ev.at("init_spectral_ratio", s0)
    evidence = {"run_start": s0, "run_start_counter": start[1], "init_spectral_ratio": ratio,
                "init_norm_ratio": ev.at("init_norm_ratio", s0), "moments_empty": ev.at("moments_empty", s0),
                "lr_sized_share": ev.at("lr_sized_share", s0)}
    thresholds = {"max_lag": T.max_lag, "min_spectral_ratio": T.min_spectral_ratio}
    fresh_state = start[1] == 0 or evidence["moments_empty"] == 1.0
    if not fresh_state:
        return Finding(RULE, "not_fired", 0.0,
                       f"the run starts with the optimizer's state (counter {start[1]:.0f})",
                       evidence=evidence, thresholds=thresholds)
    if ratio is None:
        return Finding(RULE, "inconclusive", 0.0,
                       "inconclusive: the run starts with an empty optimizer state, but its first "
                       "weights were not captured to tell trained from freshly initialised ones",
                       reason="no snapshot of the run's first step", evidence=evidence)
    if ratio < T.min_spectral_ratio:
        return Finding(RULE, "not_fired", 0.0,
                       f"a fresh start: the first weights look randomly initialised (σ_max at "
                       f"×{ratio:.2f} the random-matrix edge)", evidence=evidence, thresholds=thresholds)
    return Finding(RULE, "fired", 0.9,
                   f"optimizer state reset at step {s0}, the run's start: trained weights (σ_max "
                   f"×{ratio:.2f} the random-init edge) with an empty optimizer state (step counter "
                   f"{start[1]:.0f}), as a resume that restores the weights but not the optimizer; the "
                   f"spike begins {ctx.onset - s0} step(s) later", _hint(ev, s0, at_start=True),
                   evidence=evidence, thresholds=thresholds)


SPEC = Mechanism(
    name=RULE, role="ascent", needs=("optimizer_state", "hyperparams"), judge=judge, hint=HINT,
    thresholds=T,
    summary=f"Adam only: the step counter went back (or moments seen filled were reset: all zero, or "
            f"v = (1−β₂)g² on ≥ {T.min_v_share:.0%} of coordinates) ≤ {T.max_lag} steps before onset, "
            f"unless that update was measured ordinary (< ×{T.min_update_jump:g} the running median "
            f"and < {T.min_lr_share:.0%} of coordinates moving by ≈ lr); or a run starting "
            f"≤ {T.max_lag} steps before onset from trained weights (σ_max/(rms(√m+√n)) ≥ "
            f"{T.min_spectral_ratio:g}) with an empty state",
    badge="red", colour="#bcbd22", precedence=12,
    precedence_note="a fresh optimizer state rescales the whole update to ≈ lr·sign(g); a curvature "
                    "crossing that follows is how that step acts, so it ranks above the curvature "
                    "rules; below `data`, whose test is causal at the onset weights",
    false_alarms=("0 of 6 pseudo-spikes (`python -m forensics.analyzer.false_alarms` on clean_gd, "
                  "clean_sgd, adam_control, large_batch: one at each captured snapshot after the "
                  "first); and 0 at every 5th step and every snapshot step of those runs as a "
                  "pretend onset (tests/test_everyday_rules_planted.py)"),
    panel=(Lines("update norm against its running median",
                 {"update_norm": "‖Δθ‖ per step", "update_norm_median": "running median (50 before)"},
                 y_title="‖Δθ‖ (log)", log_y=True),
           Row(Lines("the optimizer's step counter", {"step_counter": "step counter"},
                     y_title="count"),
               Lines("learning rate", {"lr_recorded": "lr (param group 0)"}, y_title="lr"))),
    counterfactuals=("restore_optimizer",),
)
