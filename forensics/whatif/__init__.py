"""Counterfactual replay: re-run a spike's window from its snapshot with a change (lower β₂,
larger ε, lower lr, clipping, a skipped batch, a restored optimizer) and see whether the spike
goes away, after a no-change self-check that the replay reproduces the recording."""

from forensics.whatif.api import TOLERANCE, ChangeResult, WhatIf, whatif
from forensics.whatif.changes import Change, ChangeError, parse_change

__all__ = ["TOLERANCE", "Change", "ChangeError", "ChangeResult", "WhatIf", "parse_change", "whatif"]
