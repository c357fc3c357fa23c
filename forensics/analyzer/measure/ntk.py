"""Engine `ntk`: the empirical tangent kernel, the critical lr, the loss split, and the AGOP.

At θ_s on (a seeded subsample of) the onset batch, held fixed across the window: the top-s
eigenpairs of K = JJᵀ (`forensics.math.ntk.empirical_ntk` picks the per-layer factorisation
for Linear stacks, the dense Jacobian for small n, matrix-free Lanczos otherwise), η_crit for
the run's loss (n/λ_max(K) for torch's mean MSE, n = number of output entries; 2n/λ_max(K)
for the paper's (1/2n)‖r‖²), and PL_s / PL_s^⊥ of the residual (Zhu, Liu, Radhakrishnan &
Belkin 2023, "Catapults in SGD: spikes in the training loss and their impact on
generalization through feature learning", arXiv 2306.04815). For cross-entropy the
residual is n·∂L/∂logits = softmax − onehot (any other loss: n·∂L/∂F) and η_crit uses the
(1/2n) scaling, which is approximate there: `eta_crit_exact` says so.
AGOP (1/n)Σ J_x(x_i)ᵀJ_x(x_i) is compared with the task's true AGOP when the run declares
one (`task.true_agop`), else with the AGOP at the reference step.
"""

from __future__ import annotations

import torch

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure import Skip
from forensics.math.agop import TRUE_AGOP_TASKS, agop, agop_alignment, true_agop
from forensics.math.ntk import empirical_ntk, eta_crit, loss_split, output_residual


METRICS = {
    "ntk_lambda_max": ("kernel", "top eigenvalue of the empirical NTK K = JJᵀ of the batch outputs"),
    "ntk_n": ("count", "rows of the (subsampled) onset batch the kernel was taken on"),
    "ntk_s": ("count", "s, the top eigenvectors used for the loss split (≤ n/4)"),
    "eta_crit": ("lr", "η_crit = 2n/λ_max(K) for L = (1/2n)‖r‖² (n/λ_max(K) for torch's mean MSE; "
                 "for other losses the logit Jacobian and n·∂L/∂F as the residual)"),
    "lr_over_eta_crit": ("1", "η/η_crit: > 1 is past the linearised model's critical lr"),
    "eta_crit_exact": ("0/1", "1 for MSE, where η_crit is exact; 0 where the (1/2n) scaling is an "
                       "approximation"),
    "pl_top": ("loss", "PL_s = (1/n)‖U_sᵀr‖², the loss in the top-s NTK eigenspace (Zhu et al. "
               "2023, arXiv 2306.04815)"),
    "pl_rest": ("loss", "PL_s^⊥ = (1/n)‖r‖² − PL_s, the loss outside it"),
    "ntk_loss": ("loss", "PL_s + PL_s^⊥"),
    "agop_alignment": ("1", "cos(G, G*) of the AGOP with the task's true AGOP (task.true_agop)"),
    "agop_alignment_ref": ("1", "cos(G, G_ref) of the AGOP with the AGOP at the reference step, "
                           "when the task declares no true AGOP"),
}


def _residual(replay, out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """F − y for mse (so PL_s + PL_s^⊥ is the loss itself), else n·∂L/∂F (any loss)."""
    if loss == "mse":
        return (out - y.reshape(out.shape)).reshape(-1)
    return output_residual(lambda o: replay.loss_fn(o, y), out)


def measure(ev: Evidence, scene) -> None:
    """The NTK spectrum, the critical lr, the loss split and the AGOP at each finite selected step."""
    if ev.context.optimizer == "adam":
        raise Skip("the NTK's critical lr is a (S)GD limit; Adam runs use the adam engine")
    replay = scene.require_replay()
    loss = str(scene.run.manifest.get("loss", "mse"))
    s = scene.settings.ntk_top_s
    agop_ref: dict = {}
    task_agop = ev.context.task.get("true_agop")
    # one fixed batch (the onset's) for every step, so PL_s and ‖K‖ compare like with like
    batch = scene.batch(ev.context.onset, max_samples=scene.settings.ntk_max_n)
    x, y = batch[replay.input_key], batch[replay.target_key]
    # the top-s split says something only when s is small against the batch: s ≤ n/4
    s = min(s, max(1, x.shape[0] // 4))

    def at(step):
        params = scene.params(step)
        res = empirical_ntk(replay.model, params, x, k=s, max_samples=None,
                            seed=scene.settings.seed)
        with torch.no_grad():
            out = replay.outputs(params, x)
        r = _residual(replay, out, y, loss).reshape(-1)
        n_out = r.numel()
        lam = float(res.eigenvalues[0])
        crit = eta_crit(lam, n_out, "mean" if loss == "mse" else "half_mean")
        split = loss_split(res.eigenvectors, r, n_out)
        lr = scene.lr(step)
        row = {"ntk_lambda_max": lam, "ntk_n": res.n, "ntk_s": res.eigenvectors.shape[1],
               "eta_crit": crit, "lr_over_eta_crit": lr / crit, "eta_crit_exact": float(loss == "mse"),
               "pl_top": split["PL_s"], "pl_rest": split["PL_s_perp"], "ntk_loss": split["total"]}
        if x.dim() == 2 and step in (scene.window.ref, scene.window.onset, scene.window.steps[-1]):
            G = agop(lambda xx: replay.outputs(params, xx), x)
            if task_agop in TRUE_AGOP_TASKS:
                row["agop_alignment"] = agop_alignment(G, true_agop(task_agop, x.shape[1]))
            elif not agop_ref:
                agop_ref["G"] = G
            else:
                row["agop_alignment_ref"] = agop_alignment(G, agop_ref["G"])
        return row

    scene.each(ev, "ntk", scene.finite_steps(), at)
