"""Rule `data`: the spike batch alone explains the jump.

At the onset weights θ_t, the loss of batch t is placed in the distribution of the other
recorded batches' losses at the same weights. A curvature instability makes θ_t bad for every
batch (ratio ≈ 1); a corrupted, out-of-distribution or malformed batch makes only batch t bad
while the weights are fine. The test is a robust z of the log-loss (median/MAD of the other
batches) together with a minimum ratio; it does not fire when the other batches at the same
weights include outliers as far out (heavy-tailed data: the spike batch is an ordinary draw
from the tail, not a bad batch). The evidence says what kind of bad batch it is: fewer rows
than the run's usual batch (e.g. the last, short batch of an epoch with a size-dependent loss),
a period at which the run's spikes recur, non-finite or out-of-range inputs, and the worst
micro-batch when the step concatenates several.
"""

from __future__ import annotations

from forensics.analyzer.evidence import EvidenceView, Finding, inconclusive
from forensics.analyzer.plots import Bars, Limit
from forensics.analyzer.spec import Mechanism, Thresholds

RULE = "data"
HINT_BATCH = ("inspect the batch saved in {snapshot} (batch/*); skip or fix it, or add loss "
              "filtering (skip steps whose loss is far above the running median)")
HINT_SHORT = "; a short batch: drop_last=True or a loss that does not depend on the batch size"
# the spec's (docs); a finding names the suspect's snapshot and adds HINT_SHORT only for a short batch
HINT = HINT_BATCH.format(snapshot="the onset snapshot") + HINT_SHORT
T = Thresholds(
    min_ratio=(3.0, "rationale: at the same weights a curvature instability makes every batch bad "
               "(ratio ≈ 1); a batch 3× worse than the median of the others is off on its own"),
    min_robust_z=(4.0, "rationale: a robust z (median/MAD, Hampel's outlier rule) of the log-loss "
                  "≥ 4 among the other batches at the same weights: a one-sided Gaussian tail of "
                  "3e-5 per batch; measured false alarms on the clean runs: see false_alarms"),
    max_neighbor_outliers=(0, "rationale: when any other batch at the same weights is as far out "
                           "(its own robust z ≥ min_robust_z), the data is heavy-tailed and the "
                           "spike batch is an ordinary draw from that tail"),
    min_neighbors_for_z=(4, "rationale: a MAD from fewer than 4 other batches says nothing; then "
                         "only min_ratio is applied (stated in the message)"),
    short_batch=(0.5, "rationale: a batch with fewer than half the run's usual rows is 'short'"),
    max_history_rate=(0.005, "rationale: when more than 0.5% of the run's other steps (and at "
                      "least 2) jumped as far over their rolling median (half the onset's "
                      "log-jump), such jumps are part of the data (heavy tails), unless this "
                      "batch is short or malformed"),
)


def _causes(ev: EvidenceView, onset: int) -> list[str]:
    """The evidence that tells the kinds of bad batch apart, in words."""
    out = []
    rows, usual = ev.at("batch_rows", onset), ev.at("usual_rows", onset)
    if rows is not None and usual and rows < T.short_batch * usual:
        out.append(f"the batch is short: {rows:.0f} rows vs the run's usual {usual:.0f}")
    period = ev.at("recurrence_period", onset)
    if period is not None:
        out.append(f"the run's spikes recur every {period:.0f} steps (e.g. once per epoch)")
    bad = ev.at("nonfinite_inputs", onset)
    if bad:
        out.append(f"{bad:.0f} non-finite input values")
    share = ev.at("out_of_range_share", onset)
    if share:
        out.append(f"{share:.0%} of its inputs lie outside the other batches' range")
    worst, m = ev.at("worst_micro_batch", onset), ev.at("micro_batches", onset)
    if worst is not None and m:
        out.append(f"micro-batch {worst:.0f} of {m:.0f} is ×{ev.at('worst_micro_ratio', onset):.3g} "
                   "the others")
    return out


def judge(ev: EvidenceView) -> Finding:
    """The onset batch's loss in the distribution of the other batches' at the onset weights."""
    ctx = ev.context
    ratio = ev.at("batch_loss_ratio", ctx.onset)
    if ratio is None:
        return inconclusive(RULE, ev.skipped.get("data", "no other batches were recorded"))
    count = ev.at("neighbor_count", ctx.onset) or 0
    z = ev.at("batch_robust_z", ctx.onset)
    outliers = ev.at("neighbor_outliers", ctx.onset) or 0
    causes = _causes(ev, ctx.onset)
    hist, hist_n = ev.at("history_excursions", ctx.onset), ev.at("history_steps", ctx.onset)
    heavy_history = bool(hist is not None and hist_n and hist >= 2
                         and hist / hist_n > T.max_history_rate)
    evidence = {
        "batch_loss": ev.at("batch_loss", ctx.onset),
        "neighbor_loss_median": ev.at("neighbor_loss_median", ctx.onset),
        "neighbor_count": count, "ratio": ratio, "robust_z": z, "neighbor_outliers": outliers,
        "batch_rows": ev.at("batch_rows", ctx.onset), "usual_rows": ev.at("usual_rows", ctx.onset),
        "recurrence_period": ev.at("recurrence_period", ctx.onset),
        "nonfinite_inputs": ev.at("nonfinite_inputs", ctx.onset),
        "out_of_range_share": ev.at("out_of_range_share", ctx.onset),
        "worst_micro_batch": ev.at("worst_micro_batch", ctx.onset), "causes": causes,
        "suspect_step": ev.at("suspect_step", ctx.onset),
        "history_excursions": hist, "history_steps": hist_n,
    }
    thresholds = {k: T[k].value for k in T}
    use_z = count >= T.min_neighbors_for_z and z is not None
    far = ratio >= T.min_ratio and (not use_z or z >= T.min_robust_z)
    step = int(ev.at("suspect_step", ctx.onset) or ctx.onset)
    at = ("at the onset weights" if step == ctx.onset else
          f"at the weights of step {step}, the step before the probe rose (its update shows one step later)")
    where = (f"{at}, batch {step} has loss ×{ratio:.3g} the median of "
             f"{count:.0f} other recorded batches" + (f" (robust z {z:.3g})" if use_z else
                                                     " (too few batches for a robust z)"))
    if far and outliers > T.max_neighbor_outliers:
        return Finding(RULE, "not_fired", 0.2,
                       f"{where}, but {outliers:.0f} ordinary batches at the same weights are as "
                       "far out: heavy-tailed data, not a bad batch",
                       evidence=evidence, thresholds=thresholds)
    if far and heavy_history and not causes:
        return Finding(RULE, "not_fired", 0.2,
                       f"{where}, but {hist:.0f} of the run's other {hist_n:.0f} steps jumped as "
                       f"far over their rolling median and this batch is of the "
                       "usual size and well-formed: heavy-tailed data, not a bad batch",
                       evidence=evidence, thresholds=thresholds)
    if far:
        score = min(1.0, 0.6 + 0.1 * (ratio / T.min_ratio) + 0.1 * bool(causes))
        kind = ("; " + "; ".join(causes)) if causes else ""
        rows, usual = evidence["batch_rows"], evidence["usual_rows"]
        short = rows is not None and usual is not None and rows < usual
        hint = HINT_BATCH.format(snapshot="the onset snapshot" if step == ctx.onset else
                                 f"the snapshot of step {step}")
        return Finding(RULE, "fired", score, f"{where}: the batch, not the weights, is off{kind}",
                       hint + (HINT_SHORT if short else ""), evidence=evidence, thresholds=thresholds)
    return Finding(RULE, "not_fired", 0.0,
                   f"{where}: within the other batches' spread, so the weights, not the batch, "
                   "are off", evidence=evidence, thresholds=thresholds)


SPEC = Mechanism(
    false_alarms=('0 of 5 detected spike episodes that were not bad batches in the recorded controls of '
                  'tests/test_data_rule.py (4 in a Cauchy-noise stream, 1 in a clean stream, 0 ordinary '
                  'ones in the short-batch run; minibatch-loss detection); not measurable on the shipped '
                  'clean runs (no other batches captured near their snapshots)'),
    name=RULE, role="ascent", needs=("data",), judge=judge, hint=HINT, thresholds=T,
    summary=f"the onset batch's loss at the onset weights ≥ {T.min_ratio:g}× the median of the "
            f"other recorded batches' losses at the same weights and (with ≥ "
            f"{T.min_neighbors_for_z} of them) a robust z of its log-loss ≥ {T.min_robust_z:g}, "
            "while no other batch is that far out and the run's history has no such jumps beyond "
            f"{T.max_history_rate:.1%} of steps unless the batch is short or malformed "
            "(heavy-tailed data); reports a short batch, a "
            "recurrence period, non-finite or out-of-range inputs, the worst micro-batch",
    badge="orange", colour="#8c564b", precedence=10,
    precedence_note="its test is causal: at the same onset weights only the spike batch is bad, "
                    "so the weights (and their curvature) were fine for the rest of the data",
    panel=(Bars("the spike batch's loss against its neighbours, at the onset weights",
                {"batch_loss": "spike batch (step {onset})",
                 "neighbor_loss_median": "other batches (median of {neighbor_count:.0f})"},
                y_title="loss at onset weights",
                limits=(Limit(f"{T.min_ratio:g}× the others", metric="neighbor_loss_median",
                              scale=T.min_ratio),)),),
    counterfactuals=("skip_batch=onset",),
)
