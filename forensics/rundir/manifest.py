"""Build, write and read `run.json`, the manifest of a run directory."""

from __future__ import annotations

import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from forensics.rundir import atomic
from forensics.rundir.format import (
    FORMAT, FORMAT_VERSION, MANIFEST_FILE, CorruptFileError, MissingFileError,
    UnsupportedVersionError,
)


def jsonable(value: Any) -> Any:
    """Turn hyperparameter values (tensors, tuples, floats like inf) into plain JSON values."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1:
        return jsonable(value.item())
    return repr(value)


def class_path(obj: Any) -> str:
    """`module.QualName` of an object's class, e.g. `torch.optim.adam.Adam`."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


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
        d = {k: jsonable(v) for k, v in g.items() if k != "params"}
        d["params"] = [names_by_id.get(id(p), f"<unnamed:{i}>") for i, p in enumerate(g["params"])]
        groups.append(d)
    return groups


def build_manifest(
    model, optimizer, *, run_id: str, model_factory: str | None, model_kwargs: dict | None,
    loss: str, batch_keys: dict, detector: dict, recorder: dict, task: dict | None,
    seed: int | None, hf_config: str | None = None,
) -> dict:
    """The manifest dict of a new run (docs/format.md, `run.json`)."""
    import torch

    import forensics

    named, tied = param_names(model)
    names_by_id = {id(p): n for n, p in named}
    first = named[0][1] if named else None
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "run_id": run_id,
        "created": datetime.now(timezone.utc).isoformat(),
        "torch_version": torch.__version__,
        "forensics_version": getattr(forensics, "__version__", "unknown"),
        "python_version": platform.python_version(),
        "device": str(first.device) if first is not None else "cpu",
        "model": None if model_factory is None else {
            "factory": model_factory, "kwargs": jsonable(model_kwargs or {})},
        "hf_config": hf_config,
        "loss": loss,
        "batch_keys": batch_keys,
        "optimizer": {"class": class_path(optimizer),
                      "param_groups": param_groups_json(optimizer, names_by_id)},
        "params": [{"name": n, "shape": list(p.shape), "dtype": str(p.dtype).replace("torch.", ""),
                    "numel": p.numel()} for n, p in named],
        "tied": tied,
        "detector": detector,
        "recorder": recorder,
        "task": jsonable(task) if task is not None else {},
        "seed": seed,
    }


def write_manifest(run_dir: Path | str, manifest: dict) -> None:
    """Write `run.json` atomically."""
    json.dumps(manifest)  # fail early, before touching the disk, if something is not JSON
    atomic.write_json(Path(run_dir) / MANIFEST_FILE, manifest)


def read_manifest(run_dir: Path | str) -> dict:
    """Read and validate `run.json`; errors name the file and say what is wrong."""
    path = Path(run_dir) / MANIFEST_FILE
    if not Path(run_dir).is_dir():
        raise MissingFileError(run_dir, "not a run directory (folder does not exist)")
    if not path.is_file():
        raise MissingFileError(path, "missing: not a run directory (no run.json)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(path, f"cannot parse run.json as JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptFileError(path, f"not a spike-forensics manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise CorruptFileError(path, f"format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise UnsupportedVersionError(
            path, f"format_version {version} is newer than this reader supports "
                  f"({FORMAT_VERSION}); upgrade spike-forensics")
    return manifest
