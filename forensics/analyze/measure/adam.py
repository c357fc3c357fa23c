"""Engine `adam`: the β₂-lag evidence and the preconditioned curvature at each selected step.

From the snapshot's recorded g_t, v_{t−1} and step count (the β₂-lag seed; Cohen et al. 2022):
ρ = g_t²/v̂_{t−1} summaries (the lag regime is ρ ≪ 1), the share of coordinates where ε
dominates √v̂_t (then the preconditioner is capped and a low ρ proves nothing), Σv_{t−1} and
its decay between snapshots against β₂^Δt, λ_max(P^{-1/2} H P^{-1/2}) by Lanczos with
P = diag(√v̂_t + ε) the preconditioner update t divides by, and the gradient-directional
curvatures gᵀP⁻¹Hg/‖g‖² (seed wording) and the symmetric one along P^{-1/2}g, all also × η.
"""

from __future__ import annotations

import math

import torch

from forensics.analyze.evidence import Evidence
from forensics.analyze.measure import Skip
from forensics.math.directional import cosine_with_eigenvectors, preconditioned_directional_curvature
from forensics.math.flat import FlatSpec
from forensics.math.hvp import HVPOperator
from forensics.math.lanczos import lanczos
from forensics.math.preconditioner import (
    PreconditionedOperator, adam_preconditioner, effective_grad, grad_ratio, ratio_summary,
)


def measure(ev: Evidence, scene) -> None:
    if ev.context.optimizer != "adam":
        raise Skip("not an Adam run")
    replay = scene.require_replay()
    last_v: dict = {}

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
        if t == 0:
            return row
        batch = scene.batch(step)
        hvp = HVPOperator(lambda q: replay.loss(q, batch), params)
        pop = PreconditionedOperator(hvp, p)
        eig = lanczos(pop, k=1, tol=scene.settings.lanczos_tol, max_iter=120,
                      seed=scene.settings.seed)
        lam = float(eig.eigenvalues[0])
        row.update(pre_lambda_max=lam, eta_pre_lambda_max=lr * lam,
                   pre_lanczos_matvecs=eig.num_matvecs, pre_lanczos_converged=float(eig.converged),
                   limit_seed=2.0, limit_cohen=(2 + 2 * betas[0]) / (1 - betas[0]))
        if bool(torch.isfinite(g).all()) and float(g.norm()) > 0:
            curv = preconditioned_directional_curvature(hvp, g, p)
            w = g * p.rsqrt()
            row.update(pre_grad_curvature=curv["seed"], eta_pre_grad_curvature=lr * curv["seed"],
                       pre_grad_curvature_sym=curv["symmetric"],
                       eta_pre_grad_curvature_sym=lr * curv["symmetric"],
                       cos_pgrad_top=float(cosine_with_eigenvectors(w, eig.eigenvectors)[0]))
        return row

    scene.each(ev, "adam", scene.finite_steps(), at)
