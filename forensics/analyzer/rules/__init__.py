"""One rule per mechanism, found by discovery: every module here (not starting with "_") is
one mechanism and declares `SPEC = Mechanism(...)` (`forensics.analyzer.spec`).

Rules are pure: a judge sees only the measurements of the engines its spec needs (and the
spike's context), so a finding can be re-derived from `analysis/measurements.parquet`.
Adding a mechanism is adding a file here; nothing else lists them.

`SPECS`: name -> Mechanism, in the order the verdict considers them (ascent rules by
precedence, then descent, then aftermath; the name breaks ties).
"""

from __future__ import annotations

import importlib
import pkgutil

from forensics.analyzer.spec import ROLES, Mechanism


def discover(package: str, path) -> dict[str, Mechanism]:
    """The SPEC of every module of `package` (found on `path`) whose name does not start
    with "_", in verdict order. Raises TypeError for a module without a SPEC and ValueError
    for a SPEC whose name is not its file's."""
    specs = []
    for info in pkgutil.iter_modules(path):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if not isinstance(spec, Mechanism):
            raise TypeError(f"{module.__file__}: a rule module must define SPEC = Mechanism(...)")
        if spec.name != info.name:
            raise ValueError(f"{module.__file__}: SPEC.name {spec.name!r} must be the file's name")
        specs.append(spec)
    specs.sort(key=lambda s: (ROLES.index(s.role), s.precedence or 0, s.name))
    return {s.name: s for s in specs}


SPECS: dict[str, Mechanism] = discover(__name__, __path__)

__all__ = ["SPECS", "discover"]
