"""Rule `optimizer_reset`: the optimizer's state was reset while the weights were kept.

Resuming from a checkpoint of the weights without the optimizer's state restarts Adam's step
counter and its moments: the first update after the reset is m̂/√v̂ built from one gradient,
about ±η on every coordinate, whatever the scale the moments had reached (Kingma & Ba 2015,
"Adam: A Method for Stochastic Optimization", arXiv 1412.6980, §2: bias correction makes the
first steps of size ≈ η), so trained weights take a large step and the loss jumps. The record
shows it as the optimizer step counter going back within the 64 steps up to onset.
"""

from __future__ import annotations

from forensics.analyzer.evidence import EvidenceView, Finding, inconclusive
from forensics.analyzer.plots import Lines
from forensics.analyzer.spec import Mechanism, Thresholds

RULE = "optimizer_reset"
HINT = ("restore the optimizer's state with the weights on resume (optimizer.load_state_dict, "
        "the Trainer's resume_from_checkpoint), or warm the lr up again after a reset")
T = Thresholds(
    lookback=(64, "rationale: the reset step is within the 64 steps up to onset, the look-back "
              "the schedule engine reads; Adam's first steps after a reset are ≈ η per "
              "coordinate (Kingma & Ba 2015, arXiv 1412.6980)"),
)


def judge(ev: EvidenceView) -> Finding:
    """Whether the optimizer's step counter went back just before onset."""
    ctx = ev.context
    if not ev.has("lr_step_ratio") and not ev.has("counter_reset_at"):
        return inconclusive(RULE, ev.skipped.get("schedule", "no recorded optimizer step counter"))
    at = ev.at("counter_reset_at", ctx.onset)
    upd = ev.at("update_norm_ratio", ctx.onset)
    if at is None:
        return Finding(RULE, "not_fired", 0.0, "the optimizer step counter ran on through onset",
                       evidence={"update_norm_ratio": upd}, thresholds={"lookback": T.lookback})
    before, after = ev.at("counter_before", ctx.onset), ev.at("counter_after", ctx.onset)
    more = f"; the update norm at onset is ×{upd:.3g} its usual" if upd else ""
    return Finding(RULE, "fired", 0.9,
                   f"optimizer state reset at step {at:.0f}: its step counter went {before:.0f} → "
                   f"{after:.0f} (moments rebuilt from scratch, v̂ from one gradient){more}", HINT,
                   evidence={"reset_at": at, "counter_before": before, "counter_after": after,
                             "update_norm_ratio": upd},
                   thresholds={"lookback": T.lookback})


SPEC = Mechanism(
    name=RULE, role="ascent", needs=("schedule",), judge=judge, hint=HINT, thresholds=T,
    summary="the recorded optimizer step counter went back within the 64 steps up to onset "
            "(weights kept, optimizer state reset, e.g. a resume without the optimizer's state)",
    badge="yellow", colour="#c5b0d5", precedence=5,
    precedence_note="a change made by the training loop itself, read from the records: it is "
                    "the cause whatever the curvature or the batch did after it",
    false_alarms=("0 of 6 pseudo-spikes on the shipped clean runs (`python -m "
                  "forensics.analyzer.false_alarms`)"),
    panel=(Lines("optimizer step counter and update norm",
                 {"counter_before": "counter before", "counter_after": "counter after"},
                 recorded={"optimizer_step": "optimizer step (per step)"},
                 y_title="count (log)", log_y=True),),
)
