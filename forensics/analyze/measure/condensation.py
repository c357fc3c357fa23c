"""Engine `condensation`: how aligned the first layer's neurons are at each selected step.

The first layer is the first 2-D `*weight` parameter in `named_parameters()` order, with the
`*bias` beside it; ŵ_k = [w_k; b_k]/‖[w_k; b_k]‖, C = ŴŴᵀ (Li, Xu & Zhang). Reads weights
only, so it needs no model rebuild.
"""

from __future__ import annotations

from forensics.analyze.evidence import Evidence
from forensics.analyze.measure import Skip
from forensics.math.condensation import condensation_index


def first_layer(params: dict):
    """(weight, bias or None) of the first 2-D weight, or None."""
    for name, t in params.items():
        if name.endswith("weight") and t.dim() == 2:
            return t, params.get(name[: -len("weight")] + "bias")
    return None


def measure(ev: Evidence, scene) -> None:
    for step in scene.steps():
        layer = first_layer(scene.snapshot(step).params)
        if layer is None:
            raise Skip("no 2-D first-layer weight among the parameters")
        idx = condensation_index(*layer)
        ev.add_many(step, "condensation", {"condensation_index": idx["lambda_max_ratio"],
                                           "condensation_share": idx["share_aligned"],
                                           "neurons": idx["m"]})
