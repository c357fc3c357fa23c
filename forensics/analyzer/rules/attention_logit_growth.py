"""Rule `attention_logit_growth`: a head's q·kᵀ logits grew until its softmax collapsed.

The attention logits of some heads grow without bound until the softmax puts all weight on one
key (entropy → 0), and the loss spikes or diverges (Dehghani et al. 2023, "Scaling Vision
Transformers to 22 Billion Parameters", arXiv 2302.05442; Wortsman et al. 2023, "Small-scale
proxies for large-scale Transformer training instabilities", arXiv 2309.14322, who show it in
small models at high learning rates and that qk-layernorm removes it).

Fires when, at or before onset, the largest max |q·kᵀ/√d| of any head reached `min_logit` and
that head's logit grew at least `min_growth`× across the measured pre-spike window (its first
measurement to its last at or before onset; or, when the recorder wrote the per-step column
`attn_logit_max`, the largest logit of all heads grew that much over the same window). The
message names the layer and head, the growth
factor, and the head's attention entropy at onset (a collapse below `max_entropy` raises the
score). Inconclusive when the model showed no attention to the engine.
"""

from __future__ import annotations

import math

from forensics.analyzer.evidence import EvidenceView, Finding, inconclusive
from forensics.analyzer.hints import Advice
from forensics.analyzer.measure._steps import LOOKBACK
from forensics.analyzer.plots import Heatmap, Lines, Limit
from forensics.analyzer.rules._series import first, last
from forensics.analyzer.spec import Mechanism, Thresholds

RULE = "attention_logit_growth"
WINDOW = LOOKBACK  # steps before onset the growth is read over (what the engines look back)
DEHGHANI_2023 = ("Dehghani et al. 2023, \"Scaling Vision Transformers to 22 Billion Parameters\", "
                 "arXiv 2302.05442")
WORTSMAN_2023 = ("Wortsman et al. 2023, \"Small-scale proxies for large-scale Transformer training "
                 "instabilities\", arXiv 2309.14322")
HINT = (Advice("qk_norm", lambda on: None if on else True, "turn qk-layernorm on (LayerNorm on "
               "queries and keys; zoo GPT: qk_norm=True)", "add qk-layernorm (LayerNorm on "
               "queries and keys)"),
        "lower the peak lr or warm up longer (" + WORTSMAN_2023.split(",")[0] + ")")
T = Thresholds(
    min_logit=(50.0, "rationale: at a logit gap of 50 one key outweighs another by e⁵⁰ ≈ 5·10²¹, "
               "the softmax is one-hot in float32; healthy heads of the project's transformer runs "
               "stay below 30 (qk-norm control ≤ 8, a 2-layer zoo GPT at lr 0.03 ≤ 27), the growth runs of "
               + WORTSMAN_2023 + " reach 10³–10⁴"),
    min_growth=(4.0, "rationale: growth, not a level: the head's logit at onset at least 4× its "
                f"first measurement in the window ({WINDOW} steps before onset, as far as the "
                "engines look back)"),
    max_entropy=(0.1, "rationale: mean attention entropy below 0.1 nats is a collapsed head (one key "
                 "holds > 98% of the weight); " + DEHGHANI_2023 + " report entropy collapse"),
)


def _head(ev: EvidenceView, onset: int, lo: int):
    """(head, first step, first value, last step, last value) of the head with the largest logit
    at or before onset, or None."""
    best = None
    for head, (steps, values) in ev.family("attn_logit_max").items():
        pts = [(int(s), float(v)) for s, v in zip(steps, values, strict=True)
               if lo <= s <= onset and math.isfinite(v)]
        if pts and (best is None or pts[-1][1] > best[4]):
            best = (head, pts[0][0], pts[0][1], pts[-1][0], pts[-1][1])
    return best


def judge(ev: EvidenceView) -> Finding:
    """The head with the largest attention logit at onset: its level, growth and entropy."""
    ctx = ev.context
    if not ev.has("attn_logit_max"):
        return inconclusive(RULE, ev.skipped.get("attention", "no attention measurements"))
    found = _head(ev, ctx.onset, ctx.onset - WINDOW)
    if found is None:
        return inconclusive(RULE, "no attention measurement at or before onset")
    head, s0, v0, s1, v1 = found
    growth = v1 / v0 if v0 > 0 else math.inf
    entropy = ev.at(f"attn_entropy@{head}", s1)
    r0 = first(ev, "attn_logit_max_recorded", ctx.onset - WINDOW, ctx.onset)
    r1 = last(ev, "attn_logit_max_recorded", ctx.onset - WINDOW, ctx.onset)
    per_step = r1[1] / r0[1] if r0 and r1 and r1[0] > r0[0] and r0[1] > 0 else None
    layer, _, h = head.rpartition(".")
    evidence = {"layer": layer, "head": int(h.lstrip("h")) if h.lstrip("h").isdigit() else h,
                "logit_first": v0, "first_step": s0, "logit_onset": v1, "onset_step": s1,
                "growth": growth if math.isfinite(growth) else None, "entropy_onset": entropy,
                "growth_per_step": per_step, "per_step_from": r0[0] if per_step else None}
    thresholds = {"min_logit": T.min_logit, "min_growth": T.min_growth,
                  "max_entropy": T.max_entropy, "units": "logit (q·kᵀ/√d), nats"}
    ent_text = f"{entropy:.3g} nats" if entropy is not None else "not measured"
    what = (f"layer {layer} head {evidence['head']}: max |q·kᵀ/√d| {v0:.3g} at step {s0} → "
            f"{v1:.3g} at step {s1} (×{growth:.3g}); attention entropy at onset {ent_text}")
    if per_step is not None:
        what += (f"; all heads, every step: {r0[1]:.3g} at step {r0[0]} → {r1[1]:.3g} at step "
                 f"{r1[0]} (×{per_step:.3g})")
    grew = (growth >= T.min_growth and s1 > s0) or (per_step or 0.0) >= T.min_growth
    if v1 >= T.min_logit and grew:
        collapsed = entropy is not None and entropy <= T.max_entropy
        score = min(1.0, 0.6 + 0.2 * collapsed + 0.2 * min(1.0, math.log10(max(growth, 1.0)) / 2))
        return Finding(RULE, "fired", score, "attention logits grew: " + what,
                       evidence=evidence, thresholds=thresholds)
    why = (f"below {T.min_logit:g}" if v1 < T.min_logit else
           f"growth under ×{T.min_growth:g}" if s1 > s0 or per_step else
           "a single measurement, no growth to read")
    return Finding(RULE, "not_fired", min(1.0, v1 / T.min_logit) * 0.5,
                   f"no attention-logit growth ({why}): " + what,
                   evidence=evidence, thresholds=thresholds)


SPEC = Mechanism(
    false_alarms=("0 of 7 pseudo-spikes; measured by `python -m forensics.analyzer.false_alarms "
                  "sample_runs/attention_qk_norm` (the growth run with qk-layernorm: max |q·kᵀ/√d| "
                  "≤ 7.1); not yet on other healthy transformer runs; few samples"),
    name=RULE, role="ascent", needs=("attention",), judge=judge, hint=HINT, thresholds=T,
    summary=f"a head's max |q·kᵀ/√d| ≥ {T.min_logit:g} at or before onset and ≥ {T.min_growth:g}× its "
            "first measurement in the pre-spike window (or the per-step maximum of all heads grew "
            "that much); names the layer and head, the growth factor "
            f"and the head's attention entropy at onset (≤ {T.max_entropy:g} nats raises the score)",
    badge="red", colour="#ff9896", precedence=16,
    precedence_note="a collapsed attention head explains the ascent by itself; it also raises the "
                    "curvature the curvature rules measure, so it ranks before them",
    panel=(Heatmap("max attention logit per layer × head", "attn_logit_max", "max |q·kᵀ/√d|",
                   "layer.head", log=True),
           Lines("the largest attention logit and the lowest head entropy",
                 {"attn_logit_max": "max |q·kᵀ/√d| (all heads)",
                  "attn_entropy_min": "lowest head entropy (nats)"},
                 recorded={"attn_logit_max": "max |q·kᵀ/√d| (per step, training pass)"},
                 y_title="logit / nats (log)", log_y=True,
                 limits=(Limit(f"{T.min_logit:g}", T.min_logit),))),
    counterfactuals=("lr=x0.3",),
)
