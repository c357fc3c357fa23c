"""Rule `output_logit_divergence`: the output logits drifted away from log-probabilities.

Softmax is blind to a shift of all logits, so nothing in the cross-entropy holds log Z =
logsumexp over the vocabulary at 0; the logits can drift very negative, log Z far from 0, and the
loss turns unstable (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer
training instabilities", arXiv 2309.14322). PaLM's auxiliary z-loss 1e-4·log²Z keeps log Z near 0
(Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with Pathways", arXiv 2204.02311).

Fires when, at or before onset, |log Z| (mean over the batch's counted tokens) reached
`min_abs_log_z`, moved at least `min_shift` nats from its first measurement in the window, and
the mean output logit sat at or below −`min_negative` (the logits went very negative, not only the
top one up): log Z and the max logit are reported against their earlier levels and against 0.
The recorded per-step columns (`log_z_recorded`) are preferred over snapshot replays when present.
"""

from __future__ import annotations

from forensics.analyzer.evidence import EvidenceView, Finding, inconclusive
from forensics.analyzer.hints import Advice
from forensics.analyzer.plots import Limit, Lines
from forensics.analyzer.rules._series import first, last
from forensics.analyzer.spec import Mechanism, Thresholds

RULE = "output_logit_divergence"
PALM = "Chowdhery et al. 2022, \"PaLM: Scaling Language Modeling with Pathways\", arXiv 2204.02311"
WORTSMAN_2023 = ("Wortsman et al. 2023, \"Small-scale proxies for large-scale Transformer training "
                 "instabilities\", arXiv 2309.14322")
HINT = (Advice("z_loss", lambda w: 1e-4 if w < 1e-4 else None, "add the z-loss (weight from {now} "
               "to {to}: {to}·log²Z, PaLM)", "add the z-loss 1e-4·log²Z (PaLM)"),
        Advice("weight_decay", lambda wd: 0.1 if wd < 0.1 else None, "raise the weight decay "
               "(it also decays the output layer) from {now} to {to}", "decay the output layer's "
               "weights"),
        "compute the logits and the softmax in float32")
T = Thresholds(
    min_abs_log_z=(20.0, "rationale: |log Z| ≥ 20 nats: the logits are e²⁰ ≈ 5·10⁸ away from "
                   "probabilities; z-loss keeps it below 1 (" + PALM + ")"),
    min_shift=(10.0, "rationale: a divergence, not a level: log Z moved ≥ 10 nats within the "
               "pre-spike window"),
    min_negative=(20.0, "the logits become very negative (" + WORTSMAN_2023 + "); rationale: a mean "
                  "output logit ≤ −20 nats, far below any log-probability a trained model needs"),
)


def _series(ev: EvidenceView, recorded: str, replayed: str, onset: int):
    """(first, last) (step, value) at or before onset: the recorded column, else the replays."""
    for metric in (recorded, replayed):
        a, b = first(ev, metric, None, onset), last(ev, metric, None, onset)
        if a and b:
            return a, b
    return None, None


def judge(ev: EvidenceView) -> Finding:
    """log Z, the max and the mean logit at onset against their earlier levels and against 0."""
    ctx = ev.context
    z0, z1 = _series(ev, "log_z_recorded", "log_z_mean", ctx.onset)
    if z1 is None:
        return inconclusive(RULE, ev.skipped.get("logits", "no output-logit measurements"))
    m0, m1 = _series(ev, "logit_max_recorded", "logit_max", ctx.onset)
    mean = last(ev, "logit_mean", None, ctx.onset)
    shift = z1[1] - z0[1]
    evidence = {"log_z_first": z0[1], "log_z_first_step": z0[0], "log_z_onset": z1[1],
                "log_z_onset_step": z1[0], "log_z_shift": shift,
                "logit_max_first": m0[1] if m0 else None, "logit_max_onset": m1[1] if m1 else None,
                "logit_mean_onset": mean[1] if mean else None}
    thresholds = {"min_abs_log_z": T.min_abs_log_z, "min_shift": T.min_shift,
                  "min_negative": T.min_negative, "units": "nats / logit"}
    maxes = f"; max logit {m0[1]:.3g} → {m1[1]:.3g}" if m0 and m1 else ""
    means = f"; mean logit {mean[1]:.3g} at step {mean[0]}" if mean else "; mean logit not measured"
    what = (f"log Z {z0[1]:.3g} at step {z0[0]} → {z1[1]:.3g} at step {z1[0]} (0 for probabilities)"
            f"{maxes}{means}")
    negative = mean is not None and mean[1] <= -T.min_negative
    if abs(z1[1]) >= T.min_abs_log_z and abs(shift) >= T.min_shift and negative:
        score = min(1.0, 0.6 + 0.4 * min(1.0, abs(shift) / (4 * T.min_shift)))
        return Finding(RULE, "fired", score, "output logits diverged from log-probabilities: " + what,
                       evidence=evidence, thresholds=thresholds)
    why = (f"|log Z| below {T.min_abs_log_z:g}" if abs(z1[1]) < T.min_abs_log_z else
           f"log Z moved less than {T.min_shift:g} nats" if abs(shift) < T.min_shift else
           f"the mean logit is not ≤ −{T.min_negative:g}")
    return Finding(RULE, "not_fired", 0.5 * min(1.0, abs(z1[1]) / T.min_abs_log_z),
                   f"no output-logit divergence ({why}): " + what, evidence=evidence,
                   thresholds=thresholds)


SPEC = Mechanism(
    false_alarms=("0 of 7 pseudo-spikes; measured by `python -m forensics.analyzer.false_alarms "
                  "sample_runs/attention_qk_norm` (the growth run with qk-layernorm: max |q·kᵀ/√d| "
                  "≤ 7.1); not yet on other healthy transformer runs; few samples"),
    name=RULE, role="ascent", needs=("logits",), judge=judge, hint=HINT, thresholds=T,
    summary=f"|log Z| ≥ {T.min_abs_log_z:g} nats at or before onset, moved ≥ {T.min_shift:g} nats "
            f"in the pre-spike window, with the mean output logit ≤ −{T.min_negative:g}; log Z and the "
            "max logit are reported against their earlier levels and against 0",
    badge="red", colour="#c5b0d5", precedence=17,
    precedence_note="logits far from log-probabilities explain the ascent by themselves; ranked "
                    "after attention-logit growth (which drives the output logits too) and before "
                    "the curvature rules",
    panel=(Lines("log Z and the output logits against 0",
                 {"log_z_mean": "log Z (mean, replayed)", "logit_max": "max logit (replayed)",
                  "logit_mean": "mean logit (replayed)"},
                 recorded={"log_z_mean": "log Z (mean, per step)", "logit_max": "max logit (per step)"},
                 y_title="nats / logit", limits=(Limit("0 (log-probabilities)", 0.0),)),),
    counterfactuals=("weight_decay=0.1", "lr=x0.3"),  # the z-loss changes the loss: not replayable
)
