"""Engine `ntk`: the empirical tangent kernel, the critical lr, the loss split, and the AGOP.

At θ_s on (a seeded subsample of) the onset batch, held fixed across the window: the top-s
eigenpairs of K = JJᵀ (`forensics.math.ntk.empirical_ntk` picks the per-layer factorisation
for Linear stacks, the dense Jacobian for small n, matrix-free Lanczos otherwise); the critical
lr of the run's own loss, η_crit = 2/λ_max(JᵀH_outJ) with H_out = ∂²L/∂F² by autograd
(`forensics.math.gauss_newton`: 2n/λ_max(K) for (1/2n)‖F−y‖², N/λ_max(K) for torch's mean MSE
over N entries, 1/λ_max(K) for a summed MSE, and exact for cross-entropy too); and PL_s / PL_s^⊥
of the residual r = n·∂L/∂F (n samples; F − y for the half-MSE, softmax − onehot for mean
cross-entropy) along K's top-s eigenvectors (Zhu, Liu, Radhakrishnan & Belkin 2023, "Catapults
in SGD: spikes in the training loss and their impact on generalization through feature
learning", arXiv 2306.04815). `excess_top_share` is the share of the excess residual
r_s − r_ref's energy in the top-s eigenspace: in [0, 1] by construction.
Token sequences (integer inputs (B, T), outputs (B, T, V)) keep whole sequences (causal
outputs need their prefix) up to `MAX_TOKENS` tokens: the kernel's rows are the n·T·V logits
of ⌊MAX_TOKENS / T⌋ sequences, and the loss and its residual are the run's on those sequences.
AGOP (1/n)Σ J_x(x_i)ᵀJ_x(x_i) (float inputs only: token ids have no input gradient) is
compared with the task's true AGOP when the run declares one (`task.true_agop`), else with the
AGOP at the reference step.
"""

from __future__ import annotations


from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure import Skip
from forensics.math.agop import TRUE_AGOP_TASKS, agop, agop_alignment, true_agop
from forensics.math.gauss_newton import GaussNewtonOperator
from forensics.math.lanczos import lanczos
from forensics.math.ntk import empirical_ntk, loss_split

MAX_TOKENS = 256  # token sequences: the kernel is taken on ⌊MAX_TOKENS / T⌋ whole sequences (≥ 1)

METRICS = {
    "ntk_lambda_max": ("kernel", "top eigenvalue of the empirical NTK K = JJᵀ of the batch outputs"),
    "ntk_n": ("count", "rows of the (subsampled) onset batch the kernel was taken on"),
    "ntk_s": ("count", "s, the top eigenvectors used for the loss split (≤ n/4)"),
    "gn_lambda_max": ("curvature", "λ_max(JᵀH_outJ), the Gauss–Newton matrix of the run's loss on "
                      "the batch, H_out = ∂²L/∂F² by autograd (Lanczos, tol 1e-4)"),
    "eta_crit": ("lr", "η_crit = 2/λ_max(JᵀH_outJ): 2n/λ_max(K) for (1/2n)‖F−y‖², N/λ_max(K) for "
                 "torch's mean MSE over N entries, exact for any loss"),
    "lr_over_eta_crit": ("1", "η/η_crit: > 1 is past the linearised model's critical lr"),
    "pl_top": ("residual²", "PL_s = (1/n)‖U_sᵀr‖², r = n·∂L/∂F (F − y for the half-MSE), in the "
               "top-s NTK eigenspace (Zhu et al. 2023, arXiv 2306.04815)"),
    "pl_rest": ("residual²", "PL_s^⊥ = (1/n)‖r‖² − PL_s, the part outside it"),
    "ntk_loss": ("residual²", "PL_s + PL_s^⊥ = (1/n)‖r‖² (2L for the half-MSE)"),
    "excess_top_share": ("1", "‖U_sᵀ(r_s − r_ref)‖²/‖r_s − r_ref‖²: the share of the excess "
                         "residual's energy in the top-s eigenspace, in [0, 1]"),
    "agop_alignment": ("1", "cos(G, G*) of the AGOP with the task's true AGOP (task.true_agop)"),
    "agop_alignment_ref": ("1", "cos(G, G_ref) of the AGOP with the AGOP at the reference step, "
                           "when the task declares no true AGOP"),
}


def critical_lr(replay, params, x, y, settings):
    """(λ_max(JᵀH_outJ), r = n·∂L/∂F flattened, Lanczos result) of the run's loss on (x, y)."""
    op = GaussNewtonOperator(replay.outputs, params, x, lambda o: replay.loss_fn(o, y))
    eig = lanczos(op, k=1, tol=1e-4, max_iter=80, seed=settings.seed)
    return float(eig.eigenvalues[0]), (x.shape[0] * op.residual).reshape(-1)


def measure(ev: Evidence, scene) -> None:
    """The NTK spectrum, the critical lr, the loss split and the AGOP at each finite selected step."""
    if ev.context.optimizer == "adam":
        raise Skip("the NTK's critical lr is a (S)GD limit; Adam runs use the adam engine")
    replay = scene.require_replay()
    s = scene.settings.ntk_top_s
    agop_ref: dict = {}
    ref: dict = {}
    task_agop = ev.context.task.get("true_agop")
    # one fixed batch (the onset's) for every step, so PL_s and ‖K‖ compare like with like
    batch = scene.batch(ev.context.onset, max_samples=scene.settings.ntk_max_n)
    x, y = batch[replay.input_key], batch[replay.target_key]
    if x.dim() >= 2 and not x.is_floating_point():  # token sequences: whole sequences, ≤ MAX_TOKENS
        keep = max(1, MAX_TOKENS // x[0].numel())
        x, y = x[:keep], y[:keep]
    # the top-s split says something only when s is small against the batch: s ≤ n/4
    s = min(s, max(1, x.shape[0] // 4))

    def at(step):
        params = scene.params(step)
        res = empirical_ntk(replay.model, params, x, k=s, max_samples=None,
                            seed=scene.settings.seed)
        gn, r = critical_lr(replay, params, x, y, scene.settings)
        lam = float(res.eigenvalues[0])
        crit = 2.0 / gn if gn > 0 else float("inf")
        U = res.eigenvectors
        split = loss_split(U, r, x.shape[0])
        lr = scene.lr(step)
        row = {"ntk_lambda_max": lam, "ntk_n": res.n, "ntk_s": U.shape[1], "gn_lambda_max": gn,
               "eta_crit": crit, "lr_over_eta_crit": lr / crit,
               "pl_top": split["PL_s"], "pl_rest": split["PL_s_perp"], "ntk_loss": split["total"]}
        if not ref:
            ref["r"] = r
        else:
            e = (r - ref["r"]).to(U.dtype)
            energy = float(e @ e)
            if energy > 0:
                row["excess_top_share"] = float((U.T @ e).pow(2).sum()) / energy
        agop_step = step in (scene.window.ref, scene.window.onset, scene.window.steps[-1])
        if x.dim() == 2 and x.is_floating_point() and agop_step:
            G = agop(lambda xx: replay.outputs(params, xx), x)
            if task_agop in TRUE_AGOP_TASKS:
                row["agop_alignment"] = agop_alignment(G, true_agop(task_agop, x.shape[1]))
            elif not agop_ref:
                agop_ref["G"] = G
            else:
                row["agop_alignment_ref"] = agop_alignment(G, agop_ref["G"])
        return row

    scene.each(ev, "ntk", scene.finite_steps(), at)
