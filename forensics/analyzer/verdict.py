"""The spike's primary verdict: which fired rule best explains the ascent.

Only fired findings of rules whose spec has role "ascent" compete (descent and aftermath
rules describe what came after and never are a verdict). Among them, from the specs:

1. the lowest `precedence` wins outright (each spec's `precedence_note` says why);
2. among fired rules of equal precedence, a spec's `tie_break` decides: a rule whose
   tie-break says True is the verdict, one that says False yields to the others;
3. then the highest score, and the name for a tie.

No fired ascent rule: "unexplained" — but only when every engine an ascent rule needs could
measure. An engine that *failed* (`Evidence.failed`: it raised, the model or the loss could not
be rebuilt, the onset was not captured) makes the spike "not_analyzed", with that reason first,
whenever a rule that needs it could have outranked the answer (precedence ≤ the winner's, or
no winner): a failure never reads as "nothing found" or as a lesser cause. The order and the
notes are listed in docs/analysis.md (generated from the specs by
`forensics.analyzer.doc_tables`).
"""

from __future__ import annotations

from collections.abc import Mapping

from forensics.analyzer.evidence import Evidence, Finding
from forensics.analyzer.mechanisms import NOT_ANALYZED, UNEXPLAINED
from forensics.analyzer.rules import SPECS
from forensics.analyzer.spec import Mechanism


def choose_verdict(findings: list[Finding], evidence: Evidence,
                   specs: Mapping[str, Mechanism] = SPECS) -> tuple[str, float, str]:
    """Mark the primary finding in place and return (verdict, score, message).

    `evidence`: the spike's measurements, which tie-breaks read through their rule's view.
    """
    fired = [f for f in findings if f.fired and f.rule in specs and specs[f.rule].is_verdict]
    if not fired:
        blocked = _blocked(findings, evidence, specs, None)
        if blocked:
            return NOT_ANALYZED, 0.0, blocked
        unjudged = [name for name, spec in specs.items()
                    if spec.is_verdict and name not in {f.rule for f in findings}]
        if unjudged:  # a chosen subset (--mechanisms): say what was never asked
            return UNEXPLAINED, 0.0, (f"none of the chosen rules explains the ascent; not judged: "
                                      f"{', '.join(unjudged)}")
        return UNEXPLAINED, 0.0, "no rule explains the ascent"
    top = min(specs[f.rule].precedence for f in fired)
    peers = [f for f in fired if specs[f.rule].precedence == top]
    if len(peers) > 1:
        calls = {f.rule: specs[f.rule].prevails(evidence) for f in peers}
        winners = [f for f in peers if calls[f.rule] is True]
        staying = [f for f in peers if calls[f.rule] is not False]
        peers = winners or staying or peers
    primary = min(peers, key=lambda f: (-f.score, f.rule))
    blocked = _blocked(findings, evidence, specs, top)
    if blocked:
        return (NOT_ANALYZED, 0.0, f"{blocked} (without it, the evidence at hand "
                f"points to {primary.rule}: {primary.message})")
    primary.primary = True
    return primary.rule, primary.score, primary.message


def _blocked(findings: list[Finding], evidence: Evidence, specs: Mapping[str, Mechanism],
             precedence: int | None) -> str:
    """The failure that kept an ascent rule from being judged (it is inconclusive for that
    reason), when that rule could have outranked precedence `precedence` (None: any); "" when
    there is none. A rule inconclusive for another reason (e.g. it does not apply to Adam) is
    not blocked by a failure of its engine."""
    failed = getattr(evidence, "failed", {}) or {}
    for f in findings:
        spec = specs.get(f.rule)
        if f.status != "inconclusive" or spec is None or not spec.is_verdict:
            continue
        if precedence is not None and spec.precedence > precedence:
            continue
        for engine in spec.needs:
            if engine in failed and failed[engine] and failed[engine] in (f.reason or f.message):
                return f"{f.rule} could not be judged: {failed[engine]}"
    return ""
