"""Rule `catapult`: the spike is a catapult in the top eigendirections of the tangent kernel.

Gradient descent linearised around w is stable iff η < η_crit = 2/λ_max(JᵀH_outJ), the
Gauss–Newton matrix of the run's own loss; for L = (1/2n)‖F−y‖² that is 2n/λ_max(K), K = J Jᵀ
the empirical NTK (for torch's mean-reduced MSE, L = (1/n)‖r‖², it is n/λ_max(K)). With
η_crit < η < η_max the loss first grows, then λ_max(K) falls until η < η_crit again and the
loss drops: a catapult (Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari 2020, "The large
learning rate phase of deep learning: the catapult
mechanism", arXiv 2003.02218; Zhu, Liu, Radhakrishnan & Belkin 2023, "Catapults in SGD: spikes
in the training loss and their impact on generalization through feature learning", arXiv
2306.04815). Zhu et al. decompose the loss along K's top-s eigenvectors,
PL_s = (1/n)‖U_sᵀ r‖², PL_s^⊥ = L − PL_s, and find the spike lives in PL_s.

Fires when η > η_crit at onset, most of the excess residual r_peak − r_ref (its energy, a share
in [0, 1]; a share of the loss *difference* exceeds 100% when the rest of the residual falls) lies
in the top-s eigenspace, and λ_max(K) is lower after the spike than before.

Tie-break: a curvature-limit crossing can fire this rule and the Hessian one together; they
differ in what moved. With minibatches that differ from step to step, a batch whose kernel is
too sharp for η is Zhu et al.'s catapult in SGD, and this rule prevails; with one fixed (full)
batch the curvature grew into the limit at a steady lr (edge of stability / LLAS), and it
yields. Whether the batches differ is the `data` engine's `batches_identical`.
"""

from __future__ import annotations

from forensics.analyzer.evidence import EvidenceView, Finding, inconclusive
from forensics.analyzer.plots import Limit, Lines, Row
from forensics.analyzer.rules._series import clip01, first, last, peak_value
from forensics.analyzer.spec import CURVATURE_LIMIT, Mechanism, Thresholds

RULE = "catapult"
HINT = ("the learning rate exceeded the critical 2/λ_max(K) of the kernel: lower the peak lr "
        "or warm up longer; a single catapult that recovers can be benign (it flattens the "
        "kernel and often helps generalisation)")
LEWKOWYCZ_2020 = ("Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari 2020, \"The large learning "
                  "rate phase of deep learning: the catapult mechanism\", arXiv 2003.02218")
ZHU_2023 = ("Zhu, Liu, Radhakrishnan & Belkin 2023, \"Catapults in SGD: spikes in the training "
            "loss and their impact on generalization through feature learning\", arXiv 2306.04815")
T = Thresholds(
    lr_over_eta_crit=(1.0, "the linearised model diverges for η > η_crit = 2/λ_max(JᵀH_outJ) "
                      "(2n/λ_max(K) for (1/2n)‖F−y‖²); " + LEWKOWYCZ_2020),
    min_top_share=(0.5, "the spike lives in the top-s NTK eigenspace (" + ZHU_2023 + "); "
                   "rationale: 'most' of the excess residual's energy = more than half"),
    max_kernel_ratio_after=(0.95, "the catapult ends when λ_max(K) has fallen below 2n/η ("
                            + LEWKOWYCZ_2020 + "); rationale: a fall of at least 5%, so that "
                            "estimation noise is not read as a fall"),
)


def judge(ev: EvidenceView) -> Finding:
    """η against the NTK's critical lr, where the loss increase lives, and whether λ_max(K) fell."""
    ctx = ev.context
    if ctx.optimizer == "adam":
        return inconclusive(RULE, "the critical lr 2/λ_max(JᵀH_outJ) is a (S)GD limit; "
                            "Adam's limit is on the preconditioned curvature λ_max(P⁻¹H)")
    if not ev.has("lr_over_eta_crit"):
        return inconclusive(RULE, ev.skipped.get("ntk", "no NTK measurements"))

    at_onset = last(ev, "lr_over_eta_crit", None, ctx.onset)
    # the quiet reference is the last measured step before onset (the onset itself for a
    # spike from the first steps): the loss increase is counted from there
    ref_loss = last(ev, "pl_top", None, ctx.onset - 1) or first(ev, "pl_top", ctx.onset, ctx.onset)
    if at_onset is None or ref_loss is None:
        return inconclusive(RULE, "no NTK measurement at or before onset")
    ref_step = ref_loss[0]
    peak = peak_value(ev, "ntk_loss", ctx.onset, ctx.end if ctx.end is not None else None)
    if peak is None:
        return inconclusive(RULE, "no NTK measurement at the peak")
    peak_step = peak[0]
    d_top = ev.at("pl_top", peak_step) - ev.at("pl_top", ref_step)
    d_all = ev.at("ntk_loss", peak_step) - ev.at("ntk_loss", ref_step)
    excess = ev.at("excess_top_share", peak_step)
    top_share = excess if (excess is not None and d_all > 0) else float("nan")
    k_before = ev.at("ntk_lambda_max", ref_step)
    k_after = last(ev, "ntk_lambda_max", (ctx.end if ctx.end is not None else peak_step), None)
    kernel_ratio = (k_after[1] / k_before) if (k_after and k_before and k_after[0] > peak_step) else None

    evidence = {
        "lr_over_eta_crit": at_onset[1], "at_step": at_onset[0],
        "eta_crit": ev.at("eta_crit", at_onset[0]),
        "ref_step": ref_step, "peak_step": peak_step, "top_s": ev.at("ntk_s", ref_step),
        "loss_increase": d_all, "top_share_of_excess": top_share,
        "pl_top_increase": d_top,
        "ntk_lambda_max_before": k_before,
        "ntk_lambda_max_after": k_after[1] if k_after else None,
        "kernel_ratio": kernel_ratio,
        "ntk_n": ev.at("ntk_n", ref_step),
    }
    thresholds = {"lr_over_eta_crit": T.lr_over_eta_crit, "min_top_share": T.min_top_share,
                  "max_kernel_ratio_after": T.max_kernel_ratio_after}
    above = at_onset[1] > T.lr_over_eta_crit
    in_top = top_share == top_share and top_share >= T.min_top_share
    if kernel_ratio is None:
        if above and in_top:
            return inconclusive(RULE, "no snapshot after the spike to see whether λ_max(K) fell",
                                **evidence)
        drop = False
    else:
        drop = kernel_ratio < T.max_kernel_ratio_after
    if above and in_top and drop:
        score = clip01(0.5 + 0.25 * clip01(top_share) + 0.25 * clip01(1 - kernel_ratio))
        return Finding(RULE, "fired", score,
                       f"η = {at_onset[1]:.3g}·η_crit at step {at_onset[0]}; {top_share:.0%} of "
                       f"the excess residual's energy lies in the top-{int(evidence['top_s'] or 0)} "
                       f"NTK eigendirections; λ_max(K) fell ×{kernel_ratio:.3g} after the spike",
                       HINT, evidence=evidence, thresholds=thresholds)
    missing = [w for w, ok in (("η ≤ η_crit", above), ("increase not in the top eigenspace", in_top),
                               ("λ_max(K) did not fall", drop)) if not ok]
    return Finding(RULE, "not_fired", clip01(0.2 * above + 0.2 * in_top + 0.2 * drop),
                   f"no catapult: {'; '.join(missing)} (η/η_crit = {at_onset[1]:.3g})",
                   evidence=evidence, thresholds=thresholds)


def minibatches(ev: EvidenceView) -> bool:
    """True when the recorded batches differ from step to step (SGD): then this rule prevails
    over the other curvature rules; False (one full batch, or not known) makes it yield."""
    return ev.at("batches_identical", ev.context.onset) == 0.0


SPEC = Mechanism(
    false_alarms=('0 of 4 (S)GD pseudo-spikes judged; measured by `python -m '
                  'forensics.analyzer.false_alarms` on the shipped clean runs (clean_gd, clean_sgd, '
                  'adam_control, large_batch; a pseudo-spike at each captured snapshot after the first); '
                  'few samples'),
    name=RULE, role="ascent", needs=("ntk", "data"), judge=judge, hint=HINT, thresholds=T,
    summary=f"η > η_crit = 2/λ_max(JᵀH_outJ) at onset, ≥ {T.min_top_share:.0%} of the excess "
            f"residual's energy (reference → peak) lies in the top-s NTK eigenspace, and "
            f"λ_max(K) after the spike < {T.max_kernel_ratio_after:g}× before. Inconclusive for Adam",
    badge="orange", colour="#ff7f0e", precedence=20,
    precedence_note=CURVATURE_LIMIT,
    tie_break=minibatches,
    tie_break_note="prevails when the batches differ from step to step (`batches_identical` = 0: "
                   "a minibatch kernel too sharp for η, Zhu et al.'s catapult in SGD); yields with "
                   "one fixed batch or when that is unknown (the curvature grew into the limit at "
                   "a steady lr: edge of stability)",
    panel=(Row(Lines("where the loss lives: PL_s vs PL_s^⊥",
                     {"pl_top": "PL_s (top-s NTK directions)", "pl_rest": "PL_s^⊥ (the rest)"},
                     y_title="loss share (log)", log_y=True),
               Lines("lr against the critical lr 2/λ_max(JᵀH_outJ)",
                     {"lr_over_eta_crit": "η / η_crit"}, y_title="η / η_crit",
                     limits=(Limit("1 (critical lr)", 1.0),))),),
    counterfactuals=("lr=x0.5",),
)
