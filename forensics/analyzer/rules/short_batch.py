"""Rule `short_batch`: the spike's batch held far fewer samples than the run's usual batch.

The last batch of an epoch with `drop_last=False` holds the remainder of the data set; with a
loss whose scale depends on the batch size (a sum, or a mean normalised once more by a fixed
size) its loss and gradient are off by the size ratio, and with a proper mean its gradient
noise is √(usual/short) larger (the gradient noise of a mean over B samples scales as 1/√B;
McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training", arXiv
1812.06162). Such a spike recurs once per epoch, at the period the short batches show.

Fires when the batch of the onset step (or of the step before, whose update the onset loss is
the first to see) holds at most `max_share` of the median batch of the run (steps/ `batch_rows`;
its snapshots for older runs). The period is the greatest common divisor of the gaps between the
run's short batches.
"""

from __future__ import annotations

from math import gcd

from forensics.analyzer.evidence import EvidenceView, Finding, inconclusive
from forensics.analyzer.plots import Limit, Lines
from forensics.analyzer.spec import Mechanism, Thresholds

RULE = "short_batch"
HINT = ("drop the short last batch (drop_last=True) or make the loss independent of the batch "
        "size (average over the samples actually in the batch)")
T = Thresholds(
    max_share=(0.5, "rationale: a batch of half the usual size has √2× the gradient noise of a mean "
               "loss (McCandlish et al. 2018, arXiv 1812.06162) and half the scale of a summed one; "
               "ordinary batches of a fixed-size loader never differ"),
    lookback=(1, "rationale: the loss at step t is the first to see update t−1, so a short batch at "
              "the step before onset counts too"),
)


def _period(steps) -> int | None:
    """The gcd of the gaps between short-batch steps (None with fewer than two, or gcd 1)."""
    gaps = [int(b - a) for a, b in zip(steps[:-1], steps[1:], strict=True)]
    if not gaps:
        return None
    g = 0
    for d in gaps:
        g = gcd(g, d)
    return g if g > 1 else None


def judge(ev: EvidenceView) -> Finding:
    """The onset batch's size against the run's usual one, and the short batches' period."""
    ctx = ev.context
    usual = ev.at("batch_rows_usual", ctx.onset)
    if usual is None:
        return inconclusive(RULE, ev.skipped.get("batches", "no batch sizes were read"))
    steps, rows = ev.series("batch_rows")
    short_steps = [int(s) for s, r in zip(steps, rows, strict=True) if r <= T.max_share * usual]
    near = [s for s in short_steps if ctx.onset - T.lookback <= s <= ctx.onset]
    at = near[-1] if near else ctx.onset
    size = ev.at("batch_rows", at)
    period = _period(short_steps)
    evidence = {"batch_rows": size, "usual": usual, "step": at, "short_batches": len(short_steps),
                "short_steps": short_steps[:20], "period": period}
    thresholds = {"max_share": T.max_share, "lookback": T.lookback}
    if not near:
        return Finding(RULE, "not_fired", 0.0,
                       f"the batch of step {ctx.onset} holds {size:.0f} samples, the run's usual "
                       f"{usual:.0f}" if size is not None else "the onset batch size is unknown",
                       evidence=evidence, thresholds=thresholds)
    recurs = (f", recurring every {period} steps ({len(short_steps)} short batches in the run)"
              if period else "")
    hint = (f"the batch of step {at} holds {size:.0f} of the usual {usual:.0f} samples: drop the "
            f"short last batch (drop_last=True) or make the loss independent of the batch size "
            f"(average over the {size:.0f} samples present, not a sum or a fixed {usual:.0f})")
    return Finding(RULE, "fired", 0.8 + 0.2 * bool(period),
                   f"step {at}'s batch holds {size:.0f} samples against the usual {usual:.0f}{recurs}",
                   hint, evidence=evidence, thresholds=thresholds)


SPEC = Mechanism(
    name=RULE, role="ascent", needs=("batches",), judge=judge, hint=HINT, thresholds=T,
    summary=f"the batch of the onset step (or of the {T.lookback} before it) holds ≤ "
            f"{T.max_share:.0%} of the median batch of the run (steps/ batch_rows); the period is the gcd "
            "of the gaps between the short batches",
    badge="orange", colour="#aec7e8", precedence=5,
    precedence_note="the batch's size is read, not inferred: a short batch makes its loss off at any "
                    "weights, which the `data` rule would call a bad batch",
    false_alarms=("0 of 6 pseudo-spikes (`python -m forensics.analyzer.false_alarms` on clean_gd, "
                  "clean_sgd, adam_control, large_batch: one at each captured snapshot after the "
                  "first); and 0 at every 5th step and every snapshot step of those runs as a "
                  "pretend onset (tests/test_everyday_rules_planted.py)"),
    panel=(Lines("samples per batch: the onset's and every batch of the run off the usual size",
                 {"batch_rows": "batch rows"},
                 y_title="samples", from_first=True,
                 limits=(Limit("usual (median)", metric="batch_rows_usual"),
                         Limit(f"{T.max_share:g}× usual", metric="batch_rows_usual", scale=T.max_share))),),
    counterfactuals=("skip_batch=onset",),
)
