"""The spike's primary verdict: which fired rule best explains the ascent.

Precedence, with the reason for each:
1. `numerical` — once a value is NaN/Inf nothing else can be measured on it.
2. `data` — its test is causal: at the same onset weights only the spike batch is bad, so
   the weights (and their curvature) were fine for the rest of the data.
3. `catapult` vs `sharpness` — both say "η past the curvature limit"; they differ in what
   moved: if the learning rate grew into the limit (warmup, schedule, a spike from init) it
   is a catapult, if the curvature grew into it at a steady lr it is sharpness / LLAS.
4. otherwise the highest score among the ascent rules; `low_frequency` and `condensation`
   describe the descent and the aftermath and never are a verdict.
"""

from __future__ import annotations

from forensics.analyze.evidence import Finding
from forensics.analyze.mechanisms import UNEXPLAINED

ASCENT_RULES = ("numerical", "data", "catapult", "sharpness", "adam_beta2_lag")


def choose_verdict(findings: list[Finding]) -> tuple[str, float, str]:
    """Mark the primary finding in place and return (verdict, score, message)."""
    fired = {f.rule: f for f in findings if f.fired and f.rule in ASCENT_RULES}
    primary = None
    for rule in ("numerical", "data"):
        if rule in fired:
            primary = fired[rule]
            break
    if primary is None and "catapult" in fired and "sharpness" in fired:
        primary = fired["sharpness"]  # sharpness only fires when curvature, not lr, crossed
    if primary is None and fired:
        primary = max(fired.values(), key=lambda f: (f.score, -ASCENT_RULES.index(f.rule)))
    if primary is None:
        return UNEXPLAINED, 0.0, "no rule explains the ascent"
    primary.primary = True
    return primary.rule, primary.score, primary.message
