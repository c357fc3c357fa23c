"""The `forensics` command line: record the demo runs, analyze, report findings, run SQL, open the app.

A mistake a person makes (a path that holds no run, an unknown mechanism, SQL that fails or
writes) ends with one line on stderr and exit code 2, never a traceback. Heavy imports
(torch, the analyzer) happen inside the commands that need them.
"""

from forensics.cli import queries, runs, whatif  # noqa: F401  (each module registers its commands on `app`)
from forensics.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point (`forensics`)."""
    app()
