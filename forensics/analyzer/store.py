"""Writes the analyzer's tables into `<run>/analysis/` (the writer lives with the run-directory
contract, in `forensics.rundir.analysis`; this name stays for the pipeline)."""

from forensics.rundir.analysis import write_analysis

__all__ = ["write_analysis"]
