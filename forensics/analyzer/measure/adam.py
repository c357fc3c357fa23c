"""Engine `adam`: the β₂-lag evidence and the preconditioned curvature at each selected step.

From the snapshot's recorded g_t, v_{t−1} and step count (Bai et al. 2025, "Adaptive
Preconditioners Trigger Loss Spikes in Adam", arXiv 2506.04805; Cohen et al. 2022, "Adaptive
Gradient Methods at the Edge of Stability", arXiv 2207.14484):
ρ = g_t²/v̂_{t−1} summaries (the lag regime is ρ ≪ 1), the share of coordinates where ε
dominates √v̂_t (then the preconditioner is capped and a low ρ proves nothing), Σv_{t−1} and
its decay between snapshots against β₂^Δt (all at every finite selected step); and, at the
Hessian steps up to the onset (`Scene.hessian_steps`: what the rule compares; the Hessian
shared with the `curvature` engine), λ_max(P^{-1/2} H P^{-1/2}) by Lanczos to the relative
Ritz residual `settings.pre_lanczos_tol` (1e-2: within 1% of an eigenvalue, against the
rule's 5% margin), with P = diag(√v̂_t + ε) the preconditioner update t divides by, and the
gradient-directional curvatures gᵀP⁻¹Hg/‖g‖² (as Bai et al. write it) and the symmetric one
along P^{-1/2}g, all also × η.
"""

from __future__ import annotations

import math

import torch

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure import Skip
from forensics.math.directional import cosine_with_eigenvectors, preconditioned_directional_curvature
from forensics.math.flat import FlatSpec
from forensics.math.lanczos import lanczos
from forensics.math.preconditioner import (
    PreconditionedOperator, adam_preconditioner, effective_grad, grad_ratio, ratio_summary,
)


METRICS = {
    "optimizer_step": ("count", "Adam's step counter t in the snapshot"),
    "lr": ("lr", "η, the snapshot's lr (param group 0)"),
    "ratio_median": ("1", "median over coordinates of ρ = g_t²/v̂_{t−1} (Bai et al. 2025, arXiv "
                     "2506.04805: the lag regime is ρ ≪ 1)"),
    "ratio_frac_small": ("1", "share of coordinates with ρ < 0.1"),
    "ratio_frac_tiny": ("1", "share of coordinates with ρ < 0.01"),
    "eps_dominated_share": ("1", "share of coordinates where ε dominates √v̂_t (the "
                            "preconditioner is capped there)"),
    "v_sum": ("grad²", "Σv_{t−1}, the second moment summed over coordinates"),
    "v_decay_vs_beta2": ("1", "log(Σv_s/Σv_s')/((s−s')·log β₂) between snapshots: 1 means v "
                         "decays exactly like β₂^t"),
    "pre_lambda_max": ("curvature/lr", "λ_max(P^{-1/2}HP^{-1/2}) = λ_max(P⁻¹H), P = diag(√v̂_t + ε), "
                       "v̂_t = v_t/(1−β₂^t) (Lanczos, relative Ritz residual ≤ pre_lanczos_tol = "
                       "1e-2; at the Hessian steps up to the onset)"),
    "eta_pre_lambda_max": ("1", "η·λ_max(P⁻¹H), Adam-preconditioned sharpness times the lr; "
                           "against limit_beta1_zero and limit_cohen"),
    "pre_lanczos_matvecs": ("count", "preconditioned Hessian-vector products the estimate took"),
    "pre_lanczos_converged": ("0/1", "1 when the Ritz residual met the tolerance"),
    "limit_beta1_zero": ("1", "2: the stability limit on η·λ_max(P⁻¹H) of the β₁ = 0 analysis "
                         "(Bai et al. 2025, arXiv 2506.04805)"),
    "limit_cohen": ("1", "(2+2β₁)/(1−β₁), 38 at β₁ = 0.9: Adam's edge of stability (Cohen et "
                    "al. 2022, arXiv 2207.14484)"),
    "pre_grad_curvature": ("curvature/lr", "gᵀP⁻¹Hg/‖g‖², the gradient-directional preconditioned "
                           "curvature as Bai et al. 2025 write it"),
    "eta_pre_grad_curvature": ("1", "η·gᵀP⁻¹Hg/‖g‖²"),
    "pre_grad_curvature_sym": ("curvature/lr", "the symmetric version, wᵀP^{-1/2}HP^{-1/2}w/‖w‖² "
                               "along w = P^{-1/2}g"),
    "eta_pre_grad_curvature_sym": ("1", "η × the symmetric version"),
    "cos_pgrad_top": ("1", "|cos| of P^{-1/2}g with the top eigenvector of P^{-1/2}HP^{-1/2}"),
}


def measure(ev: Evidence, scene) -> None:
    """Adam's lag statistics and preconditioned curvature at each finite selected step."""
    if ev.context.optimizer != "adam":
        raise Skip("not an Adam run")
    replay = scene.require_replay()
    last_v: dict = {}
    curvature_steps = {s for s in scene.hessian_steps() if s <= ev.context.onset}

    def at(step):
        snap = scene.snapshot(step)
        if not snap.exp_avg_sq:
            raise Skip(f"snapshot of step {step} holds no exp_avg_sq")
        meta = snap.meta
        betas = tuple(meta.get("betas") or ev.context.betas or (0.9, 0.999))
        eps = float(meta.get("eps", ev.context.eps or 1e-8))
        wd = float(meta.get("weight_decay", 0.0) or 0.0)
        decoupled = bool(meta.get("decoupled_weight_decay", False))
        t = int(meta.get("optimizer_step", 0))
        lr = scene.lr(step)
        params = scene.params(step)
        spec = FlatSpec.from_params(params)
        theta = spec.flatten(params)
        g = effective_grad(spec.flatten(replay.tensors(snap.grads)), theta, wd,
                           decoupled_weight_decay=decoupled)
        v = spec.flatten(replay.tensors(snap.exp_avg_sq))
        rho = ratio_summary(grad_ratio(g, v, step=t, beta2=betas[1]))
        p = adam_preconditioner(g, v, step=t, betas=betas, eps=eps, moment="v_t")
        v_sum = float(v.double().sum())
        row = {
            "optimizer_step": t, "lr": lr, "ratio_median": rho["median"],
            "ratio_frac_small": rho["share_below_0.1"], "ratio_frac_tiny": rho["share_below_0.01"],
            "eps_dominated_share": float(((p - eps) < eps).double().mean()), "v_sum": v_sum,
        }
        prev = last_v.get("sum")
        if prev is not None and prev[1] > 0 and v_sum > 0 and step > prev[0]:
            row["v_decay_vs_beta2"] = math.log(v_sum / prev[1]) / ((step - prev[0]) *
                                                                   math.log(betas[1]))
        last_v["sum"] = (step, v_sum)
        if t == 0 or step not in curvature_steps:
            return row
        h = scene.hessian(step)
        eig = lanczos(PreconditionedOperator(h.op, p), k=1, tol=scene.settings.pre_lanczos_tol,
                      max_iter=120, seed=scene.settings.seed)
        lam = float(eig.eigenvalues[0])
        row.update(pre_lambda_max=lam, eta_pre_lambda_max=lr * lam,
                   pre_lanczos_matvecs=eig.num_matvecs, pre_lanczos_converged=float(eig.converged),
                   limit_beta1_zero=2.0, limit_cohen=(2 + 2 * betas[0]) / (1 - betas[0]))
        if bool(torch.isfinite(g).all()) and float(g.norm()) > 0:
            curv = preconditioned_directional_curvature(h.product, g, p)
            w = g * p.rsqrt()
            row.update(pre_grad_curvature=curv["seed"], eta_pre_grad_curvature=lr * curv["seed"],
                       pre_grad_curvature_sym=curv["symmetric"],
                       eta_pre_grad_curvature_sym=lr * curv["symmetric"],
                       cos_pgrad_top=float(cosine_with_eigenvectors(w, eig.eigenvectors)[0]))
        return row

    scene.each(ev, "adam", scene.finite_steps(), at)
