"""Engine `condensation`: how aligned the first layer's neurons are at each selected step.

The first layer is the model's first `nn.Linear` when the model was rebuilt (else the first
2-D `*weight` parameter in `named_parameters()` order whose `*bias` matches its rows);
ŵ_k = [w_k; b_k]/‖[w_k; b_k]‖, C = ŴŴᵀ (Li, Xu & Zhang 2023, "Loss Spike in Training Neural
Networks", arXiv 2305.12133). Reads weights only, so it needs no model rebuild.
"""

from __future__ import annotations

import torch

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure import Skip
from forensics.math.condensation import condensation_index


METRICS = {
    "condensation_index": ("1", "λ_max(C)/m, C = ŴŴᵀ of the normalised first-layer [w_k; b_k] "
                           "(Li, Xu & Zhang 2023, arXiv 2305.12133)"),
    "condensation_share": ("1", "share of first-layer neuron pairs with |C_ij| > 0.95"),
    "neurons": ("count", "m, the first layer's neurons"),
}


def first_layer_names(model, params: dict) -> tuple[str, str | None] | None:
    """Parameter names (weight, bias or None) of the first layer of neurons, or None."""
    if model is not None:
        for prefix, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                w, b = f"{prefix}.weight".lstrip("."), f"{prefix}.bias".lstrip(".")
                if w in params:
                    return w, (b if b in params else None)
        return None
    for name, t in params.items():
        if name.endswith("weight") and t.dim() == 2:
            bias = name[: -len("weight")] + "bias"
            ok = bias in params and params[bias].shape == (t.shape[0],)
            return name, (bias if ok else None)
    return None


def first_layer(params: dict, model=None):
    """(weight, bias or None) tensors of the first layer of neurons, or None."""
    names = first_layer_names(model, params)
    if names is None:
        return None
    w, b = names
    return params[w], (params[b] if b else None)


def measure(ev: Evidence, scene) -> None:
    """The condensation indices of the first layer at each selected step."""
    model = scene.replay.model if scene.replay is not None else None
    for step in scene.steps():
        layer = first_layer(scene.snapshot(step).params, model)
        if layer is None:
            raise Skip("no nn.Linear first layer among the parameters")
        idx = condensation_index(*layer)
        ev.add_many(step, "condensation", {"condensation_index": idx["lambda_max_ratio"],
                                           "condensation_share": idx["share_aligned"],
                                           "neurons": idx["m"]})
