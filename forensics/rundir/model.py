"""Rebuild the model a run was recorded with, importing code only with the user's consent."""

from __future__ import annotations

import importlib
from typing import Any, Callable

# factories that may be imported without allow_import: the project's own model zoo, and the
# Hugging Face rebuild (it instantiates only transformers.PreTrainedModel classes from a config)
TRUSTED_PREFIXES = ("forensics.zoo", "forensics.integrations.huggingface")


def import_callable(path: str, *, allow_import: bool, what: str = "factory") -> Callable:
    """Resolve `"package.module:callable"`.

    Importing runs code, so only callables under `forensics.zoo` are imported unless
    `allow_import=True` (the user's consent to run code named in a stranger's run).
    """
    if not isinstance(path, str) or ":" not in path:
        raise ValueError(f"{what} must be 'package.module:callable', got {path!r}")
    module_name, _, attr = path.partition(":")
    trusted = any(module_name == p or module_name.startswith(p + ".") for p in TRUSTED_PREFIXES)
    if not (allow_import or trusted):
        raise PermissionError(
            f"refusing to import {what} {path!r}: importing runs code named in the run's "
            f"run.json. If you trust this run, pass allow_import=True.")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} for {what} {path!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"{what} {path!r} is not callable")
    return obj


def build_model(manifest: dict, allow_import: bool = False, *, device: str = "cpu") -> Any:
    """Call the factory recorded in `manifest["model"]` with its kwargs; return the model.

    Raises ValueError when the manifest names no factory or the factory fails, and
    PermissionError when the factory lives outside `forensics.zoo` and `allow_import` is False.
    """
    spec = manifest.get("model") if isinstance(manifest, dict) else None
    if not spec or not spec.get("factory"):
        raise ValueError("run.json names no model factory (recorded without model_factory=); "
                         "rebuild the model yourself and load the snapshot's param/ tensors")
    factory = import_callable(spec["factory"], allow_import=allow_import)
    kwargs = spec.get("kwargs") or {}
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise ValueError(f"model factory {spec['factory']!r} failed with kwargs {kwargs!r}: "
                         f"{type(e).__name__}: {e}") from e
    if hasattr(model, "to"):
        model = model.to(device)
    return model
