"""`run.json`, typed: the `Manifest` dataclass, its one validator, its one writer and its one reader.

The recorder builds it (`build_manifest`), `write_manifest` checks and writes it, `read_manifest`
/ `load_manifest` read and check it: every consumer sees a manifest that passed the same checks,
and every error names `run.json` and the key that is wrong.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from forensics.rundir import atomic
from forensics.rundir.checks import (
    Invalid, is_int, need, need_int, need_number, need_str_map, need_type, short,
)
from forensics.rundir.describe import (  # noqa: F401  (re-exported: the recorder imports them here)
    FAMILIES, class_path, optimizer_family, param_groups_json, param_names,
)
from forensics.rundir.format import (
    FORMAT, FORMAT_VERSION, MANIFEST_FILE, CorruptFileError, MissingFileError,
    UnsupportedVersionError,
)
from forensics.rundir.jsonsafe import dumps, jsonsafe
from forensics.rundir.paths import inside, is_regular_file

_HPARAMS = ("lr", "eps", "weight_decay", "momentum", "dampening")


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild the model: `factory` ("package.module:callable") called with `kwargs`."""

    factory: str
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer at record time: class path, family ("adam", "sgd", "other"; decided once,
    when recording) and every param group's hyperparameters with `params` as names."""

    class_path: str
    family: str
    param_groups: list = field(default_factory=list)

    @property
    def group0(self) -> dict:
        """Hyperparameters of param group 0 ({} when there is none)."""
        return self.param_groups[0] if self.param_groups else {}


@dataclass(frozen=True)
class Manifest:
    """The contents of `run.json` (docs/format.md), checked. Keys this version does not know
    are kept in `extra` and written back unchanged (additive changes need no new version)."""

    format_version: int = FORMAT_VERSION
    run_id: str | None = None  # None: the folder's name
    created: str | None = None  # ISO-8601 UTC
    torch_version: str | None = None
    forensics_version: str | None = None
    python_version: str | None = None
    device: str | None = None
    torch_threads: int | None = None  # torch.get_num_threads() at recording (CPU float sums depend on it)
    model: ModelSpec | None = None
    hf_config: str | None = None  # file name beside run.json
    loss: str = "mse"
    batch_keys: dict = field(default_factory=dict)  # {"input": key, "target": key}
    optimizer: OptimizerSpec | None = None
    params: list = field(default_factory=list)  # [{"name", "shape", "dtype", "numel"}]
    tied: dict = field(default_factory=dict)  # {alias: canonical}
    detector: dict = field(default_factory=dict)
    recorder: dict = field(default_factory=dict)
    task: dict = field(default_factory=dict)
    seed: int | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, *, source: Path | str = MANIFEST_FILE) -> "Manifest":
        """Check `d` (parsed run.json) and type it.

        Raises:
            CorruptFileError: not a manifest, or a key has the wrong type (names `source`).
            UnsupportedVersionError: `format_version` is newer than this reader supports.
        """
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CorruptFileError(source, f"not a spike-forensics manifest (format != {FORMAT!r})")
        version = d.get("format_version")
        if not (is_int(version) and version >= 1):
            raise CorruptFileError(source, f"format_version must be a positive integer, got {short(version)}")
        if version > FORMAT_VERSION:
            raise UnsupportedVersionError(
                source, f"format_version {version} is newer than this reader supports "
                        f"({FORMAT_VERSION}); upgrade spike-forensics")
        try:
            _check(d)
        except Invalid as e:
            raise CorruptFileError(source, str(e)) from None
        known = {f for f in cls.__dataclass_fields__ if f != "extra"} | {"format"}
        model, opt = d.get("model"), d.get("optimizer")
        return cls(
            **{k: d[k] for k in known - {"format", "model", "optimizer"} if d.get(k) is not None},
            model=None if not model else ModelSpec(model["factory"], dict(model.get("kwargs") or {})),
            optimizer=None if not opt else OptimizerSpec(
                opt["class"], opt.get("family") or optimizer_family(opt["class"]),
                list(opt.get("param_groups") or [])),
            extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict:
        """The JSON object of run.json, keys in the documented order, then `extra`."""
        d = {"format": FORMAT, **asdict(self)}
        extra = d.pop("extra")
        if self.optimizer is not None:
            d["optimizer"] = {"class": self.optimizer.class_path, "family": self.optimizer.family,
                              "param_groups": self.optimizer.param_groups}
        return {**d, **extra}

    def to_json(self) -> str:
        """run.json's text, indented."""
        return dumps(self.to_dict(), indent=2) + "\n"


def _check(d: dict) -> None:
    """Raise `Invalid` naming the first key of manifest `d` with a wrong type."""
    for key in ("run_id", "created", "torch_version", "forensics_version", "python_version", "device",
                "loss", "hf_config"):
        need_type(d, key, str, "a string", nullable=True)
    hf = d.get("hf_config")
    need(hf is None or (hf not in ("", ".", "..") and "/" not in hf and "\\" not in hf),
         "hf_config", hf, "a file name beside run.json")
    need_int(d, "seed", optional=True, nullable=True)
    need_int(d, "torch_threads", optional=True, nullable=True, minimum=1)
    for key in ("detector", "recorder", "task"):
        need_type(d, key, dict, "an object", nullable=True)
    need_str_map(d, "batch_keys")
    need_str_map(d, "tied")
    model = d.get("model")
    if model is not None:
        need(isinstance(model, dict), "model", model, "an object or null")
        need_type(model, "factory", str, "a string", optional=False)
        need_type(model, "kwargs", dict, "an object", nullable=True)
    _check_optimizer(d.get("optimizer"))
    params = d.get("params")
    if params is not None:
        need(isinstance(params, list) and all(isinstance(p, dict) for p in params),
             "params", params, "a list of objects")
        for i, p in enumerate(params):
            try:
                need_type(p, "name", str, "a string", optional=False)
                need_type(p, "dtype", str, "a string")
                need_int(p, "numel", optional=True, minimum=0)
                shape = p.get("shape", [])
                need(isinstance(shape, list) and all(is_int(n) and n >= 0 for n in shape),
                     "shape", shape, "a list of sizes")
            except Invalid as e:
                raise Invalid(f"params[{i}].{e}") from None


def _check_optimizer(opt: Any) -> None:
    if opt is None:
        return
    need(isinstance(opt, dict), "optimizer", opt, "an object or null")
    need_type(opt, "class", str, "a string", optional=False)
    need_type(opt, "family", str, "a string", nullable=True)
    groups = opt.get("param_groups", [])
    need(isinstance(groups, list) and all(isinstance(g, dict) for g in groups),
         "optimizer.param_groups", groups, "a list of objects")
    for i, g in enumerate(groups):
        try:
            for key in _HPARAMS:
                need_number(g, key, optional=True, nullable=True)
            betas = g.get("betas")
            need(betas is None or (isinstance(betas, list) and len(betas) == 2
                                   and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                           for b in betas)), "betas", betas, "two numbers")
            names = g.get("params", [])
            need(isinstance(names, list) and all(isinstance(n, str) for n in names),
                 "params", names, "a list of parameter names")
        except Invalid as e:
            raise Invalid(f"optimizer.param_groups[{i}].{e}") from None


def build_manifest(
    model, optimizer, *, run_id: str, model_factory: str | None, model_kwargs: dict | None,
    loss: str, batch_keys: dict, detector: dict, recorder: dict, task: dict | None,
    seed: int | None, hf_config: str | None = None,
) -> dict:
    """The manifest of a new run as run.json's JSON object (docs/format.md): built through
    `Manifest`, so it is checked here, and the optimizer family is decided here."""
    import torch

    import forensics

    named, tied = param_names(model)
    names_by_id = {id(p): n for n, p in named}
    first = named[0][1] if named else None
    return Manifest(
        run_id=run_id, created=datetime.now(timezone.utc).isoformat(),
        torch_version=torch.__version__, forensics_version=getattr(forensics, "__version__", "unknown"),
        python_version=platform.python_version(), device=str(first.device) if first is not None else "cpu",
        torch_threads=torch.get_num_threads(),
        model=None if model_factory is None else ModelSpec(model_factory, jsonsafe(model_kwargs or {})),
        hf_config=hf_config, loss=loss, batch_keys=batch_keys,
        optimizer=OptimizerSpec(class_path(optimizer), optimizer_family(optimizer),
                                param_groups_json(optimizer, names_by_id)),
        params=[{"name": n, "shape": list(p.shape), "dtype": str(p.dtype).replace("torch.", ""),
                 "numel": p.numel()} for n, p in named],
        tied=tied, detector=detector, recorder=recorder,
        task=jsonsafe(task) if task is not None else {}, seed=seed,
    ).to_dict()


def write_manifest(run_dir: Path | str, manifest: "Manifest | dict") -> None:
    """Check `manifest` (a `Manifest` or run.json's JSON object) and write `run.json` atomically.

    Raises:
        CorruptFileError: a key has the wrong type (nothing is written).
        TypeError / ValueError: a value is not JSON (nothing is written).
    """
    path = Path(run_dir) / MANIFEST_FILE
    if not isinstance(manifest, Manifest):
        manifest = Manifest.from_dict(manifest, source=path)
    atomic.write_bytes(path, manifest.to_json().encode())


def load_manifest(run_dir: Path | str) -> Manifest:
    """Read and check `run.json`, typed.

    Raises:
        MissingFileError: the folder or its run.json does not exist.
        CorruptFileError: run.json is not JSON, not a manifest, or a key has the wrong type.
        UnsupportedVersionError: written by a newer format version.
    """
    return Manifest.from_dict(_read_json(run_dir), source=Path(run_dir) / MANIFEST_FILE)


def read_manifest(run_dir: Path | str) -> dict:
    """Read and check `run.json`; its JSON object as written. Errors as `load_manifest`."""
    raw = _read_json(run_dir)
    Manifest.from_dict(raw, source=Path(run_dir) / MANIFEST_FILE)
    return raw


def _read_json(run_dir: Path | str) -> Any:
    path = Path(run_dir) / MANIFEST_FILE
    if not Path(run_dir).is_dir():
        raise MissingFileError(run_dir, "not a run directory (folder does not exist)")
    if not path.exists():
        raise MissingFileError(path, "missing: not a run directory (no run.json)")
    inside(run_dir, MANIFEST_FILE)
    if not is_regular_file(path):
        raise CorruptFileError(path, "not a regular file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptFileError(path, f"cannot parse run.json as JSON ({e})") from None
