"""What run.json records about the live model and optimizer: names, hyperparameters as JSON,
and the optimizer family, decided once, at record time."""

from __future__ import annotations

from typing import Any

from forensics.rundir.jsonsafe import jsonsafe

# Optimizer families the analyzer knows (docs/format.md, `optimizer.family`).
FAMILIES = ("adam", "sgd", "other")


def class_path(obj: Any) -> str:
    """`module.QualName` of an object's class, e.g. `torch.optim.adam.Adam`."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def optimizer_family(optimizer: Any) -> str:
    """"adam", "sgd" or "other" for a live optimizer, or for a class path (old runs).

    A live optimizer is judged by its class hierarchy: a subclass of torch's Adam or AdamW is
    "adam", of SGD "sgd". Otherwise (and for a class path string, when a run recorded before
    the family was written is read) the name decides: a class path containing "adam"
    (Adam, AdamW, NAdam, RAdam, Adamax: they keep `exp_avg_sq`) is "adam", one ending in
    "sgd" is "sgd", anything else "other".
    """
    if not isinstance(optimizer, str):
        for cls in type(optimizer).__mro__:
            if cls.__module__.startswith("torch.optim"):
                if cls.__name__ in ("Adam", "AdamW"):
                    return "adam"
                if cls.__name__ == "SGD":
                    return "sgd"
        optimizer = class_path(optimizer)
    name = optimizer.lower()
    return "adam" if "adam" in name else ("sgd" if name.endswith("sgd") else "other")


def param_names(model) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """`named_parameters()` (tied weights once) and the `{alias: canonical}` map of ties."""
    named = list(model.named_parameters())
    canonical = {id(p): n for n, p in named}
    tied = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if canonical.get(id(p), n) != n:
            tied[n] = canonical[id(p)]
    return named, tied


def param_groups_json(optimizer, names_by_id: dict[int, str]) -> list[dict]:
    """Every hyperparameter of every param group, plus `params` as parameter names."""
    groups = []
    for g in optimizer.param_groups:
        d = {k: jsonsafe(v) for k, v in g.items() if k != "params"}
        d["params"] = [names_by_id.get(id(p), f"<unnamed:{i}>") for i, p in enumerate(g["params"])]
        groups.append(d)
    return groups
