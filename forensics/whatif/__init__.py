"""Counterfactual replay: re-run a spike's window from its snapshot with a change (lower β₂,
larger ε, lower lr, clipping, a skipped batch, a restored optimizer) and see whether the spike
goes away, after a no-change self-check that the replay reproduces the recording.

The package itself is callable (`forensics.whatif(run, 0, ...)` is `api.whatif`): the public name
`forensics.whatif` is the function, and importing any submodule binds this package to that same
attribute of `forensics`, so a second call would otherwise hit the module ("not callable")."""

import sys
import types

from forensics.whatif.api import TOLERANCE, ChangeResult, WhatIf, whatif
from forensics.whatif.changes import Change, ChangeError, parse_change


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return whatif(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["TOLERANCE", "Change", "ChangeError", "ChangeResult", "WhatIf", "parse_change", "whatif"]
