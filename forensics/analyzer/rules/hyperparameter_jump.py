"""Rule `hyperparameter_jump`: a hyperparameter of a param group jumped just before the spike.

A scheduler rebuilt at a resume (the decayed lr snaps back to its initial value), a warmup
that restarts, a wrong milestone, a β₂ or ε edited mid-run: the step size changes at once
while the weights sit where the old one had brought them. The curvature limit 2/η of gradient
descent (Cohen, Kaur, Li, Kolter & Talwalkar 2021, "Gradient Descent on Neural Networks
Typically Occurs at the Edge of Stability", arXiv 2103.00065) then is crossed by the jump
itself: the jump is the cause, the crossing how it acts.

Reads the lr of param group 0 at every recorded step and every group's hyperparameters from
the per-step `param_groups` column of `steps/` (at snapshots for older runs; engine
`hyperparams`), and whether an lr scheduler drives the group (its `initial_lr` key): the
message says "(schedule)" then, the source of the change. A change counts when, between two
consecutive recorded
values at most `max_lag` steps before onset, it raises the step size by ≥ `min_factor`: the lr
up, ε down, 1−β (β₁, β₂, momentum, dampening) or the weight decay either way. An lr rising
from 0 (a warmup's first step) is not a jump.
"""

from __future__ import annotations

import math

from forensics.analyzer.evidence import EvidenceView, Finding
from forensics.analyzer.measure.hyperparams import HPARAMS, member
from forensics.analyzer.plots import Lines
from forensics.analyzer.rules._series import clip01, peak_value, window
from forensics.analyzer.spec import Mechanism, Thresholds

RULE = "hyperparameter_jump"
HINT = ("restore the lr scheduler with the optimizer on resume (build it, then load its state) so "
        "the schedule continues; ramp intended changes over many steps")
T = Thresholds(
    min_factor=(3.0, "rationale: smooth schedules change the lr by a few % per step and a linear "
                "warmup by at most ×2 (its second step); ×3 between two recorded values is a jump"),
    max_lag=(50, "rationale: past the stability limit the loss grows geometrically; at ×1.1 per step "
             "it takes ~50 steps to grow ×100"),
)
LR = HPARAMS[0]  # the lr's name among the hyperparameters
NAMES = {"lr": "learning rate", "beta1": "β₁", "beta2": "β₂", "eps": "ε",
         "weight_decay": "weight decay", "momentum": "momentum", "dampening": "dampening"}


def factor(name: str, old: float, new: float) -> float | None:
    """How much the change old → new raises the step size (≥ 1), or None when it does not
    count: the lr falling or rising from 0, ε rising."""
    if old == new:
        return 1.0
    if name == LR:
        return new / old if old > 0 and new > old else None
    if name == "eps":
        return (old / new if new > 0 else math.inf) if new < old else None
    if name == "weight_decay":
        lo, hi = sorted((abs(old), abs(new)))
        return hi / lo if lo > 0 else math.inf
    a, b = 1 - old, 1 - new  # β's, momentum, dampening: their memory 1/(1 − β)
    if a <= 0 or b <= 0:
        return math.inf
    return max(a / b, b / a)


def _changes(ev: EvidenceView, lo: int, hi: int) -> list[dict]:
    """Every change between consecutive recorded values whose new value is in [lo, hi]."""
    series = [(LR, 0, *ev.series("lr_recorded"))]
    groups = peak_value(ev, "param_groups")
    for k in range(int(groups[1]) if groups else 0):
        for name in HPARAMS:
            steps, values = ev.series(member(name, k))
            if name == LR and k == 0 and series[0][2].size:
                continue  # steps/ has group 0's lr at every step
            series.append((name, k, steps, values))
    out = []
    for name, k, steps, values in series:
        for i in range(1, len(steps)):
            if not lo <= steps[i] <= hi or values[i] == values[i - 1]:
                continue
            f = factor(name, float(values[i - 1]), float(values[i]))
            out.append({"hparam": name, "group": k, "step": int(steps[i]), "since": int(steps[i - 1]),
                        "old": float(values[i - 1]), "new": float(values[i]), "factor": f,
                        "source": _source(ev, name, k), "groups": int(groups[1]) if groups else 1})
    return out


def _source(ev: EvidenceView, name: str, group: int) -> str | None:
    """"schedule" for an lr a torch lr scheduler drives, "set directly" for one it does not,
    None when unknown or for other hyperparameters."""
    scheduled = peak_value(ev, f"lr_scheduled@g{group}")
    if name != LR or scheduled is None:
        return None
    return "schedule" if scheduled[1] > 0 else "set directly"


def _say(c: dict, onset: int) -> str:
    where = (f"at step {c['step']}" if c["step"] - c["since"] == 1
             else f"between steps {c['since']} and {c['step']}")
    memory = c["hparam"] in ("beta1", "beta2", "momentum", "dampening")
    old, new = (1 - c["old"], 1 - c["new"]) if memory else (c["old"], c["new"])
    ratio = new / old if old else math.inf
    size = f"×{ratio:.3g}" if ratio >= 1 else f"÷{1 / ratio:.3g}" if ratio > 0 else "to 0"
    size = f"(1 − {NAMES[c['hparam']]} {size})" if memory else size
    group = f" of param group {c['group']}" if c.get("groups", 1) > 1 or c["group"] else ""
    source = f"{c['source']}, " if c.get("source") else ""
    return (f"{NAMES[c['hparam']]}{group} jumped {size} {where} ({source}{c['old']:.3g} → {c['new']:.3g}), "
            f"{onset - c['step']} step(s) before onset")


def _hint(c: dict) -> str:
    name = NAMES[c["hparam"]]
    keep = f"keep the {name} of param group {c['group']} at {c['old']:.3g} (it became {c['new']:.3g})"
    if c["hparam"] == LR and c.get("source") == "set directly":
        return (f"{keep}: the lr was set directly, not by a scheduler; ramp an intended raise over many "
                f"steps")
    if c["hparam"] == LR:
        return (f"{keep}: restore the lr scheduler's state with the optimizer on resume (build it, "
                f"then load_state_dict), so the schedule continues; ramp an intended raise over many steps")
    return f"{keep}, or change it gradually over many steps"


def judge(ev: EvidenceView) -> Finding:
    """The largest qualifying hyperparameter change at most `max_lag` steps before onset."""
    ctx = ev.context
    lo = ctx.onset - T.max_lag
    changes = _changes(ev, lo, ctx.onset)
    thresholds = {"min_factor": T.min_factor, "max_lag": T.max_lag}
    if not changes and not window(ev, "lr_recorded", lo, ctx.onset)[0].size and not ev.has("param_groups"):
        return Finding(RULE, "inconclusive", 0.0, "inconclusive: no hyperparameters recorded before onset",
                       reason="steps/ holds no lr and no snapshot near the spike holds param_groups")
    jumps = [c for c in changes if c["factor"] is not None and c["factor"] >= T.min_factor]
    if not jumps:
        scored = [c for c in changes if c["factor"] is not None]
        top = max(scored, key=lambda c: c["factor"]) if scored else None
        said = (f"the largest change raised the step size ×{top['factor']:.3g} ({_say(top, ctx.onset)})"
                if top else "no hyperparameter changed in a way that raises the step size")
        return Finding(RULE, "not_fired", 0.0,
                       f"no jump ≥ ×{T.min_factor:g} in the {T.max_lag} steps before onset: {said}",
                       evidence={"largest": top, "changes": len(changes)}, thresholds=thresholds)
    top = max(jumps, key=lambda c: (c["factor"], c["step"]))
    score = clip01(0.7 + 0.1 * math.log(top["factor"] / T.min_factor + 1, 2))
    others = [c for c in jumps if c is not top]
    more = f"; also {', '.join(NAMES[c['hparam']] for c in others)}" if others else ""
    return Finding(RULE, "fired", score, _say(top, ctx.onset) + more, _hint(top),
                   evidence={**top, "jumps": jumps}, thresholds=thresholds)


SPEC = Mechanism(
    name=RULE, role="ascent", needs=("hyperparams",), judge=judge, hint=HINT, thresholds=T,
    summary=f"between two consecutive recorded values ≤ {T.max_lag} steps before onset, a param "
            f"group's hyperparameter raised the step size ≥ ×{T.min_factor:g}: lr up (not from 0), "
            "ε down, 1−β (β₁, β₂, momentum, dampening) or weight decay either way",
    badge="orange", colour="#17becf", precedence=-1,
    precedence_note="a jump before onset is the cause and what follows is how it acts — a curvature "
                    "crossing, or a loss that overflows to NaN (\"lr ×25 at step 600\") — so it ranks "
                    "above every other rule, `numerical` included (which only says where the values "
                    "went non-finite)",
    false_alarms=("0 of 6 pseudo-spikes (`python -m forensics.analyzer.false_alarms` on clean_gd, "
                  "clean_sgd, adam_control, large_batch: one at each captured snapshot after the "
                  "first); and 0 at every 5th step and every snapshot step of those runs as a "
                  "pretend onset (tests/test_everyday_rules_planted.py)"),
    panel=(Lines("learning rate over the window", {"lr_recorded": "lr (param group 0)"},
                 y_title="lr (log)", log_y=True),),
    counterfactuals=("jump=before",),
)
