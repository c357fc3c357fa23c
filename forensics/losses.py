"""Resolve the loss named in run.json ("mse", "cross_entropy" or an import path) to a callable."""

from __future__ import annotations

from typing import Callable


def resolve_loss(spec: str, *, allow_import: bool = False) -> Callable:
    """`(output, target) -> scalar loss` for `spec`.

    "mse" is `F.mse_loss` with mean reduction, "cross_entropy" is `F.cross_entropy` (mean);
    anything else is `"package.module:callable"`, imported only if `allow_import` or it lives
    under `forensics.zoo` (see `forensics.rundir.model.import_callable`).
    """
    import torch.nn.functional as F

    if spec == "mse":
        return F.mse_loss
    if spec == "cross_entropy":
        return F.cross_entropy
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"unknown loss {spec!r}: use 'mse', 'cross_entropy' or 'package.module:callable'")
    from forensics.rundir.model import import_callable

    return import_callable(spec, allow_import=allow_import, what="loss")


def reimport_problem(loss) -> str | None:
    """Why the loss a Recorder stores in run.json could not be re-imported by a later
    `forensics analyze` in another process, or None when it can.

    A name ("mse", "cross_entropy") always can. A callable is stored as `module:qualname`:
    a lambda or a function defined inside another (`<locals>` in its qualname), one defined in
    the script being run (`__main__`, which is another module in the analyzing process), or
    one whose module or attribute does not resolve now cannot. The message names the fix:
    define the loss in an importable module, or pass it live with `analyze(run, loss_fn=...)`.
    The Recorder calls this at construction and warns with the message.
    """
    import importlib

    if isinstance(loss, str) and loss in ("mse", "cross_entropy"):
        return None
    fix = ("define it at module level in an importable module, or pass it live to "
           "`analyze(run, model=..., loss_fn=...)` (run.json's name is then not imported)")
    if isinstance(loss, str):
        module_name, sep, qualname = loss.partition(":")
    elif callable(loss):
        module_name = getattr(loss, "__module__", None) or ""
        qualname = getattr(loss, "__qualname__", None) or ""
        sep = ":" if module_name and qualname else ""
    else:
        return f"loss {loss!r} is neither a name nor a callable; {fix}"
    spec = f"{module_name}:{qualname}"
    if not sep or not module_name or not qualname:
        return f"loss {loss!r} has no importable module:qualname; {fix}"
    if module_name == "__main__":
        return (f"loss {spec} lives in the script being run (__main__), which another process "
                f"cannot import; {fix}")
    if "<lambda>" in qualname or "<locals>" in qualname:
        return f"loss {spec} is a lambda or a local function, which cannot be imported; {fix}"
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        return f"loss {spec} does not resolve ({type(exc).__name__}: {exc}); {fix}"
    return None


def from_running_main(spec: str) -> Callable | None:
    """The callable `spec` = "__main__:name" names in this process's running script, or None.

    Nothing is imported: `__main__` is already loaded (it is the script calling the analyzer
    with its live model), so this only looks the name up there, as a plain dotted path of
    public names, and returns it when it is callable and was defined in `__main__`.
    """
    import sys

    if not isinstance(spec, str) or not spec.startswith("__main__:"):
        return None
    obj = sys.modules.get("__main__")
    for part in spec.partition(":")[2].split("."):
        if not part.isidentifier() or part.startswith("_") or obj is None:
            return None
        obj = getattr(obj, part, None)
    if callable(obj) and getattr(obj, "__module__", None) == "__main__":
        return obj
    return None
