"""Engine `curvature`: Hessian sharpness and directional curvature at the Hessian steps.

Measured at the few selected steps the rules compare (`Scene.hessian_steps`: onset, the
step before it, the quiet reference, the first step after the peak). On an Adam run no rule
judges the plain λ_max (Adam's limit is on P⁻¹H, the `adam` engine), so by default only the
directional curvatures are measured there, at the onset (H·g is the product the `adam` engine
already made, H·u one more), and no Lanczos: on the ~10M zoo GPT that Lanczos was ~22 of the
spike's ~48 Hessian-vector products (bench/results/analysis_gpt.md). `Settings(
adam_plain_lambda_max=True)` measures it too, at the onset only and to
`settings.pre_lanczos_tol` (a clustered top can take Lanczos 70 products to 1e-3).
At θ_s on batch s (the Hessian shared with the `adam` engine, `_hessian.SharedHessian`): the
top-k Hessian eigenpairs by Lanczos on Hessian-vector products (to the relative tolerance
`settings.lanczos_tol`), η·λ_max against 2/η and (2+2β)/η (Cohen et al. 2021), the
directional curvatures gᵀHg/‖g‖² and uᵀHu/‖u‖² for the recorded gradient and
the actual update u = θ_{s+1} − θ_s, their cosines with the top eigenvector (Gilmer et al.
2021, "A Loss Curvature Perspective on Training Instability"), and the loss ratio after a
gradient step restricted to the top eigendirection, L(θ − η(gᵀv₁)v₁)/L(θ), which exceeds 1
exactly when that direction is unstable on a quadratic (|1 − ηλ| > 1).
"""

from __future__ import annotations

import torch

from forensics.analyzer.evidence import Evidence
from forensics.math.directional import cosine_with_eigenvectors, directional_curvature, loss_along
from forensics.math.flat import FlatSpec
from forensics.math.lanczos import lanczos

METRICS = {
    "loss": ("loss", "the batch loss L(θ_s; batch s) as replayed"),
    "lr": ("lr", "η, the snapshot's lr (param group 0)"),
    "lambda_max": ("curvature", "top Hessian eigenvalue of the batch loss at θ_s (Lanczos with full "
                   "reorthogonalisation, relative Ritz residual ≤ lanczos_tol = 1e-3; on Adam runs "
                   "only with Settings(adam_plain_lambda_max=True), at the onset, ≤ pre_lanczos_tol "
                   "= 1e-2)"),
    "lambda_2": ("curvature", "second Hessian eigenvalue, only with Settings(top_k=2) (the second "
                 "pair costs about 1.5× the Hessian-vector products)"),
    "eta_lambda_max": ("1", "η·λ_max, against limit_gd and limit_momentum (Cohen et al. 2021, "
                       "arXiv 2103.00065)"),
    "limit_gd": ("1", "2: GD's stability limit on η·λ_max"),
    "limit_momentum": ("1", "2+2β: heavy-ball momentum β's stability limit on η·λ_max"),
    "lanczos_matvecs": ("count", "Hessian-vector products the estimate took"),
    "lanczos_converged": ("0/1", "1 when the Ritz residual met the tolerance"),
    "lanczos_rel_residual": ("1", "the top Ritz pair's residual over |λ_max|"),
    "batch_size": ("count", "rows of the (subsampled) batch the Hessian was taken on"),
    "grad_curvature": ("curvature", "gᵀHg/‖g‖² along the recorded gradient (Gilmer et al. 2021, "
                       "arXiv 2110.04369)"),
    "eta_grad_curvature": ("1", "η·gᵀHg/‖g‖²"),
    "cos_grad_top": ("1", "|cos| of g with the top Hessian eigenvector"),
    "loss_ratio_top_step": ("1", "L(θ − η(gᵀv₁)v₁)/L(θ): the GD step restricted to the top "
                            "direction; > 1 iff that direction is unstable on a quadratic"),
    "update_curvature": ("curvature", "uᵀHu/‖u‖² along the actual update u = θ_{s+1} − θ_s (when "
                         "step s+1 was captured)"),
    "cos_update_top": ("1", "|cos| of u with the top Hessian eigenvector"),
    "loss_ratio_update": ("1", "L(θ + u)/L(θ) on the same batch"),
}


def hessian_at(scene, step: int, tol: float):
    """(shared Hessian, eig result, flat spec) for the batch-loss Hessian at `step`."""
    h = scene.hessian(step)
    eig = lanczos(h.op, k=scene.settings.top_k, tol=tol, max_iter=120, seed=scene.settings.seed)
    return h, eig, FlatSpec.from_params(h.params)


def recorded_update(scene, step: int, spec: FlatSpec) -> torch.Tensor | None:
    """θ_{s+1} − θ_s from the next snapshot, when step s+1 was captured."""
    try:
        nxt = scene.snapshot(step + 1)
    except KeyError:
        return None
    now = scene.params(step)
    after = scene.require_replay().tensors(nxt.params)
    return spec.flatten(after) - spec.flatten(now)


def measure(ev: Evidence, scene) -> None:
    """Hessian eigenpairs, directional curvatures and loss ratios at each finite selected step."""
    replay = scene.require_replay()
    momentum = ev.context.momentum
    adam = ev.context.optimizer == "adam"  # context only: the Adam-preconditioned tolerance
    tol = scene.settings.pre_lanczos_tol if adam else scene.settings.lanczos_tol

    plain = not adam or getattr(scene.settings, "adam_plain_lambda_max", False)

    def at(step):
        if plain:
            h, eig, spec = hessian_at(scene, step, tol)
        else:
            h, eig = scene.hessian(step), None
            spec = FlatSpec.from_params(h.params)
        op, params, batch, loss_fn = h.op, h.params, h.batch, h.loss_fn
        lr = scene.lr(step)
        row = {"loss": op.loss, "lr": lr, "limit_gd": 2.0, "limit_momentum": 2 + 2 * momentum,
               "batch_size": next(iter(batch.values())).shape[0]}
        if eig is not None:
            lam = eig.eigenvalues.tolist()
            row.update(lambda_max=lam[0], eta_lambda_max=lr * lam[0], lanczos_matvecs=eig.num_matvecs,
                       lanczos_converged=float(eig.converged),
                       lanczos_rel_residual=float(eig.residuals[0] / max(abs(lam[0]), 1e-30)))
            if len(lam) > 1:
                row["lambda_2"] = lam[1]
        g = spec.flatten(replay.tensors(scene.snapshot(step).grads)) \
            if scene.snapshot(step).grads else op.grad
        base = max(op.loss, 1e-30)
        if bool(torch.isfinite(g).all()) and float(g.norm()) > 0:
            row["grad_curvature"] = directional_curvature(h.product, g)
            row["eta_grad_curvature"] = lr * row["grad_curvature"]
            if eig is not None:
                v1 = eig.eigenvectors[:, 0]
                row["cos_grad_top"] = float(cosine_with_eigenvectors(g, eig.eigenvectors)[0])
                step_top = -lr * float(torch.dot(g, v1))
                row["loss_ratio_top_step"] = float(loss_along(loss_fn, params, v1, [step_top])[0]) / base
        u = recorded_update(scene, step, spec)
        if u is not None and bool(torch.isfinite(u).all()) and float(u.norm()) > 0:
            row["update_curvature"] = directional_curvature(h.product, u)
            if eig is not None:
                row["cos_update_top"] = float(cosine_with_eigenvectors(u, eig.eigenvectors)[0])
            row["loss_ratio_update"] = float(loss_along(loss_fn, params, u, [1.0])[0]) / base
        return row

    steps = scene.hessian_steps()
    if adam:
        onset = [s for s in steps if s <= ev.context.onset][-1:]
        steps = tuple(onset or steps[:1])
    scene.each(ev, "curvature", steps, at)
