"""Snapshot files: safetensors with string metadata, saved atomically, loaded lazily via safe_open."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forensics.rundir import atomic
from forensics.rundir.digest import PLACEHOLDER, seal, verify_digest
from forensics.rundir.format import (
    DIGEST_KEY, STATE, CorruptFileError, MissingFileError,
)
from forensics.rundir.paths import is_regular_file

_STRING_META = {"run_id", "role", "optimizer", DIGEST_KEY}


def encode_meta(meta: dict[str, Any]) -> dict[str, str]:
    """Python values -> safetensors' `dict[str, str]`: numbers via repr, lists/objects via JSON."""
    out = {}
    for k, v in meta.items():
        if v is None:
            out[k] = ""
        elif isinstance(v, bool):
            out[k] = "true" if v else "false"
        elif isinstance(v, str):
            out[k] = v
        elif isinstance(v, float):
            out[k] = repr(v)
        elif isinstance(v, int):
            out[k] = str(v)
        else:
            out[k] = json.dumps(v)
    return out


def decode_meta(meta: dict[str, str]) -> dict[str, Any]:
    """Inverse of `encode_meta`: strings -> ints, floats (nan/inf too), bools, lists, None."""
    out: dict[str, Any] = {}
    for k, v in (meta or {}).items():
        if k in _STRING_META:
            out[k] = v
        elif v == "":
            out[k] = None
        elif v in ("true", "false"):
            out[k] = v == "true"
        elif v == "unknown":
            out[k] = None
        else:
            try:
                out[k] = json.loads(v)
            except ValueError:
                try:
                    out[k] = float(v)  # "nan", "inf", "-inf"
                except ValueError:
                    out[k] = v
    return out


def save_snapshot(path: Path | str, tensors: dict, meta: dict[str, Any], *, digest: bool = True) -> int:
    """Save `{name: tensor}` (CPU, contiguous) with metadata atomically; return the file size.

    With `digest` (default) the file carries its own SHA-256 in the metadata key `sha256`
    (see `forensics.rundir.digest`), computed here, on the caller's (writer) thread, over the
    bytes written; `load_snapshot` verifies it.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, DIGEST_KEY: PLACEHOLDER} if digest else meta

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=encode_meta(meta))
        if digest:
            seal(tmp)

    atomic.write_with(path, write)
    return path.stat().st_size


@dataclass
class Snapshot:
    """The state before update `step`: params, grads, optimizer state and batch, plus metadata."""

    step: int
    meta: dict[str, Any]
    params: dict = field(default_factory=dict)
    grads: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)  # state name -> {param name: tensor}
    batch: dict = field(default_factory=dict)
    verified: bool | None = None  # True: digest checked; False: none recorded; None: not checked

    @property
    def exp_avg(self) -> dict:
        """Adam's m_{t-1} by parameter name ({} for other optimizers)."""
        return self.state.get("exp_avg", {})

    @property
    def exp_avg_sq(self) -> dict:
        """Adam's v_{t-1} by parameter name ({} for other optimizers)."""
        return self.state.get("exp_avg_sq", {})


def _split(name: str) -> tuple[str, str | None, str]:
    """`param/a.b` -> ("param", None, "a.b"); `state/k/a.b` -> ("state", "k", "a.b")."""
    kind, _, rest = name.partition("/")
    if kind == STATE.rstrip("/"):
        key, _, rest = rest.partition("/")
        return "state", key, rest
    if kind in ("param", "grad", "batch"):
        return kind, None, rest
    return "state", kind, rest  # exp_avg/<name>, momentum_buffer/<name>, ...


def read_meta(path: Path | str) -> dict[str, Any]:
    """Decoded metadata of a snapshot file, without reading tensor data.

    Raises:
        MissingFileError / CorruptFileError: naming the file.
    """
    return decode_meta(_open(path, "cpu").metadata())


def _open(path: Path | str, device: str):
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise MissingFileError(path, "snapshot file is missing")
    if not is_regular_file(path):
        raise CorruptFileError(path, "not a regular file (a FIFO, device or folder): not opened")
    try:
        return safe_open(str(path), framework="pt", device=device)
    except Exception as e:  # safetensors raises its own error types for bad headers/sizes
        raise CorruptFileError(path, f"truncated or corrupt snapshot ({e})") from None


def load_snapshot(path: Path | str, *, device: str = "cpu", include=None, verify: bool = True) -> Snapshot:
    """Load a snapshot; `include` limits kinds read (subset of param, grad, state, batch).

    With `verify` (default) the file's recorded SHA-256 is checked first (`verified` is True);
    a file recorded before digests loads with `verified` False.

    Raises:
        MissingFileError: the file does not exist.
        CorruptFileError: not a regular file, unreadable, or its bytes do not match its digest.
    """
    path = Path(path)
    f = _open(path, device)
    verified = verify_digest(path) if verify else None
    meta = decode_meta(f.metadata())
    snap = Snapshot(step=int(meta.get("step", -1)), meta=meta, verified=verified)
    try:
        for name in f.keys():
            kind, key, rest = _split(name)
            if include is not None and kind not in include:
                continue
            tensor = f.get_tensor(name)
            if kind == "param":
                snap.params[rest] = tensor
            elif kind == "grad":
                snap.grads[rest] = tensor
            elif kind == "batch":
                snap.batch[rest] = tensor
            else:
                snap.state.setdefault(key, {})[rest] = tensor
    except CorruptFileError:
        raise
    except Exception as e:
        raise CorruptFileError(path, f"truncated or corrupt snapshot ({e})") from None
    return snap
