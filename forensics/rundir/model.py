"""Rebuild the model a run was recorded with, importing code only with the user's consent.

`run.json` is a stranger's file: the model factory and the loss it names are resolved without
running anything the project did not mean to expose. Without `allow_import=True` only the
callables registered with :func:`trusted` in a module of :data:`TRUSTED_MODULES` resolve, by one
plain name (no attribute walk), and their keyword arguments are checked against the callable's
annotations and a parameter budget before any memory is allocated.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from typing import Any, Callable

# Modules whose registered callables may be resolved without allow_import: the project's model
# zoo, and the Hugging Face rebuild (it instantiates only transformers.PreTrainedModel classes
# from a config). Exact names: a module's submodules are not trusted by inheritance.
TRUSTED_MODULES = ("forensics.zoo.models", "forensics.zoo.gpt", "forensics.integrations.huggingface")

# Largest model a trusted factory may build without the user's consent (4e8 parameters is
# 1.6 GB in float32): a stranger's run.json must not make `forensics analyze` allocate without bound.
MAX_TRUSTED_PARAMETERS = 400_000_000

_TRUSTED: dict[str, Callable] = {}


def trusted(fn: Callable) -> Callable:
    """Register `fn` as resolvable from a run.json without `allow_import` (a decorator).

    Only callables defined in a module of :data:`TRUSTED_MODULES` may be registered; they are
    then reachable as ``"<module>:<name>"`` and nothing else in their module is.
    """
    if fn.__module__ not in TRUSTED_MODULES:
        raise AssertionError(f"{fn.__module__}.{fn.__qualname__} is outside the trusted modules")
    _TRUSTED[f"{fn.__module__}:{fn.__name__}"] = fn
    return fn


def import_callable(path: str, *, allow_import: bool, what: str = "factory") -> Callable:
    """Resolve `"package.module:callable"` named in a run's run.json.

    Importing runs code, so without `allow_import=True` (the user's consent) only a callable
    registered with :func:`trusted` resolves: the module must be one of :data:`TRUSTED_MODULES`
    exactly and the name after ``:`` a plain identifier of that registered callable — no
    attribute walk (``torch.os.system``), no dunders. With consent, ``module:attr.attr`` is walked.

    Raises PermissionError for anything untrusted without consent, ValueError for a malformed
    or unresolvable path.
    """
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(f"{what} must be 'package.module:callable', got {path!r}")
    module_name, _, attr = path.partition(":")
    if not allow_import:
        if module_name in TRUSTED_MODULES and attr.isidentifier() and not attr.startswith("_"):
            importlib.import_module(module_name)  # our own module: registers its trusted callables
            fn = _TRUSTED.get(path)
            if fn is not None:
                return fn
        raise PermissionError(
            f"refusing to import {what} {path!r}: importing runs code named in the run's "
            f"run.json, and it is not one of the project's own trusted callables (registered "
            f"names in {', '.join(TRUSTED_MODULES)}). If you trust this run, pass "
            f"allow_import=True (--allow-import), or pass the live object (model=, loss_fn=).")
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


def check_kwargs(fn: Callable, kwargs: dict, *, what: str) -> None:
    """Check JSON kwargs against `fn`'s signature and annotations; ValueError naming the first bad one.

    Supported annotations: int, float, str, bool, dict, list[int] (and unions of them); an
    unannotated parameter accepts any JSON value.
    """
    if not isinstance(kwargs, dict):
        raise ValueError(f"{what}: kwargs must be a JSON object, got {type(kwargs).__name__}")
    sig = inspect.signature(fn)
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"{what}: kwargs {sorted(kwargs)} do not fit its signature: {e}") from None
    hints = typing.get_type_hints(fn)
    for name, value in kwargs.items():
        hint = hints.get(name)
        if hint is not None and not _fits(value, hint):
            raise ValueError(f"{what}: kwarg {name!r} must be {_name(hint)}, got {value!r:.80}")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, dict):
        return isinstance(value, hint)
    return True


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _count_parameters_on_meta(factory: Callable, kwargs: dict) -> int:
    """Number of parameters `factory(**kwargs)` builds, counted on the meta device (no memory)."""
    import torch

    with torch.device("meta"):
        model = factory(**kwargs)
    return sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0


def build_model(manifest: dict, allow_import: bool = False, *, device: str = "cpu",
                max_parameters: int | None = MAX_TRUSTED_PARAMETERS) -> Any:
    """Call the factory recorded in `manifest["model"]` with its kwargs; return the model.

    Without `allow_import`, the factory must be a trusted one (:func:`import_callable`), its
    kwargs must fit its annotations, and the model it would build — counted first on the meta
    device — must have at most `max_parameters` parameters (None: no bound). With
    `allow_import=True` the user has consented to run the factory as it is.

    Raises ValueError when the manifest names no factory, the kwargs are wrong, the model is over
    budget or the factory fails, and PermissionError when the factory is not trusted and
    `allow_import` is False.
    """
    spec = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(spec, dict) or not spec.get("factory"):
        raise ValueError("run.json names no model factory (recorded without model_factory=); "
                         "rebuild the model yourself and pass it as model=")
    name = spec["factory"]
    factory = import_callable(name, allow_import=allow_import)
    kwargs = spec.get("kwargs") or {}
    if not allow_import:
        check_kwargs(factory, kwargs, what=f"model factory {name!r}")
        if max_parameters is not None:
            try:
                n = _count_parameters_on_meta(factory, kwargs)
            except Exception as e:
                raise ValueError(f"model factory {name!r} failed with kwargs {kwargs!r:.200}: "
                                 f"{type(e).__name__}: {e}") from e
            if n > max_parameters:
                raise ValueError(
                    f"model factory {name!r} would build {n:,} parameters, over the budget of "
                    f"{max_parameters:,} for a model rebuilt from run.json without consent; pass "
                    f"allow_import=True (--allow-import) if you trust this run, or pass model=")
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise ValueError(f"model factory {name!r} failed with kwargs {kwargs!r:.200}: "
                         f"{type(e).__name__}: {e}") from e
    if hasattr(model, "to"):
        model = model.to(device)
    return model
