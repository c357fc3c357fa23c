"""Rule `lr_jump`: the learning rate jumped just before the spike.

A learning-rate scheduler rebuilt at resume (its state not restored) or a misconfigured
schedule multiplies the lr in one step; past the stability limit of the current curvature the
loss then rises at once (the limits of Cohen et al. 2021, "Gradient Descent on Neural Networks
Typically Occurs at the Edge of Stability", arXiv 2103.00065, scale as 1/η). A schedule
(warmup, decay) changes the lr by a few percent per step; a one-step ratio ≥ 2 within the 64
steps up to onset is a jump, not a schedule.
"""

from __future__ import annotations

from forensics.analyzer.evidence import EvidenceView, Finding, inconclusive
from forensics.analyzer.plots import Lines
from forensics.analyzer.spec import Mechanism, Thresholds

RULE = "lr_jump"
HINT = ("restore the scheduler's state with the optimizer's on resume "
        "(scheduler.load_state_dict), or fix the schedule; warm up again after a deliberate raise")
T = Thresholds(
    min_step_ratio=(2.0, "rationale: warmup and decay schedules change the lr by a few percent "
                    "per step; a one-step ×2 halves every stability limit at once (Cohen et al. "
                    "2021, arXiv 2103.00065: the limits scale as 1/η)"),
    prevail_ratio=(5.0, "rationale: a raise below ×5 can be a deliberate one into a regime a "
                   "curvature rule explains (a catapult needs η_crit < η < η_max ≈ 2η_crit, "
                   "Lewkowycz et al. 2020, arXiv 2003.02218); at ×5 and beyond the jump itself "
                   "is the story (a scheduler reset on resume is ×10–×25)"),
)


def prevails(ev: EvidenceView) -> bool:
    """True for a jump of ×prevail_ratio or more (the jump is the cause), False below (a
    curvature rule that fires too tells how the raised lr made the loss rise)."""
    ratio = ev.at("lr_step_ratio", ev.context.onset)
    return ratio is not None and ratio >= T.prevail_ratio


def judge(ev: EvidenceView) -> Finding:
    """The largest one-step lr ratio in the 64 steps up to onset."""
    ctx = ev.context
    ratio = ev.at("lr_step_ratio", ctx.onset)
    if ratio is None:
        return inconclusive(RULE, ev.skipped.get("schedule", "no recorded lr before onset"))
    at = ev.at("lr_step_ratio_at", ctx.onset)
    before, after = ev.at("lr_before", ctx.onset), ev.at("lr_after", ctx.onset)
    evidence = {"lr_step_ratio": ratio, "at_step": at, "lr_before": before, "lr_after": after,
                "update_norm_ratio": ev.at("update_norm_ratio", ctx.onset)}
    thresholds = {"min_step_ratio": T.min_step_ratio}
    if ratio >= T.min_step_ratio:
        upd = evidence["update_norm_ratio"]
        more = f"; the update norm at onset is ×{upd:.3g} its usual" if upd else ""
        score = min(1.0, 0.7 + 0.1 * ratio / T.prevail_ratio) if ratio >= T.prevail_ratio else 0.4
        return Finding(RULE, "fired", score,
                       f"learning rate jumped ×{ratio:.3g} at step {at:.0f} ({before:.3g} → "
                       f"{after:.3g}), {ctx.onset - at:.0f} step(s) before onset{more}", HINT,
                       evidence=evidence, thresholds=thresholds)
    return Finding(RULE, "not_fired", 0.0,
                   f"no lr jump before onset (largest one-step ratio ×{ratio:.3g})",
                   evidence=evidence, thresholds=thresholds)


SPEC = Mechanism(
    name=RULE, role="ascent", needs=("schedule",), judge=judge, hint=HINT, thresholds=T,
    summary=f"the recorded lr rose ×{T.min_step_ratio:g} or more in one step within the 64 steps "
            "up to onset (a scheduler rebuilt on resume, a bad schedule)",
    badge="yellow", colour="#ffbb78", precedence=20,
    precedence_note="an lr jump moves every stability limit: it competes with the curvature "
                    "rules that describe how the loss then rose",
    tie_break=prevails,
    tie_break_note=f"prevails for a one-step jump of ×{T.prevail_ratio:g} or more (a reset "
                   "schedule); yields below it, where its score is 0.4, to a curvature rule that "
                   "fires too",
    false_alarms=("0 of 6 pseudo-spikes on the shipped clean runs (`python -m "
                  "forensics.analyzer.false_alarms`)"),
    panel=(Lines("learning rate before onset", {"lr_before": "lr before the jump",
                                                "lr_after": "lr after it"},
                 recorded={"lr": "lr (per step)"}, y_title="lr (log)", log_y=True),),
)
