"""The spike's primary verdict: which fired rule best explains the ascent.

Precedence, with the reason for each:
1. `numerical` — once a value is NaN/Inf nothing else can be measured on it.
2. `data` — its test is causal: at the same onset weights only the spike batch is bad, so
   the weights (and their curvature) were fine for the rest of the data.
3. `catapult` vs `sharpness` — both say "η past the curvature limit"; they differ in what
   moved. If the learning rate grew into the limit (warmup, schedule, a spike from init) the
   sharpness rule does not fire and it is a catapult (Lewkowycz et al. 2020). If both fired,
   the batches decide: with minibatches that differ from step to step, a batch whose kernel
   is too sharp for η is Zhu et al.'s catapult in SGD; with one fixed (full) batch, the
   curvature grew into the limit at a steady lr: edge of stability / LLAS (Cohen et al. 2021;
   Li, Xu & Zhang).
4. otherwise the highest score among the ascent rules; `low_frequency` and `condensation`
   describe the descent and the aftermath and never are a verdict.
"""

from __future__ import annotations

from forensics.analyze.evidence import Finding
from forensics.analyze.mechanisms import UNEXPLAINED

ASCENT_RULES = ("numerical", "data", "catapult", "sharpness", "adam_beta2_lag")


def choose_verdict(findings: list[Finding], *, stochastic: bool = False) -> tuple[str, float, str]:
    """Mark the primary finding in place and return (verdict, score, message).

    `stochastic`: the batches differ from step to step (minibatch training).
    """
    fired = {f.rule: f for f in findings if f.fired and f.rule in ASCENT_RULES}
    primary = None
    for rule in ("numerical", "data"):
        if rule in fired:
            primary = fired[rule]
            break
    if primary is None and "catapult" in fired and "sharpness" in fired:
        primary = fired["catapult"] if stochastic else fired["sharpness"]
    if primary is None and fired:
        primary = max(fired.values(), key=lambda f: (f.score, -ASCENT_RULES.index(f.rule)))
    if primary is None:
        return UNEXPLAINED, 0.0, "no rule explains the ascent"
    primary.primary = True
    return primary.rule, primary.score, primary.message
