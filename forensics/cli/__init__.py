"""The `forensics` command line: record the demo runs, analyze, report findings, run SQL, open the app.

A mistake a person makes (a path that holds no run, an unknown mechanism, SQL that fails or
writes) ends with one line on stderr and exit code 2, never a traceback. Heavy imports
(torch, the analyzer) happen inside the commands that need them.
"""

from forensics.cli import queries, runs, whatif  # noqa: F401  (each module registers its commands on `app`)
from forensics.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point (`forensics`). torch's OpenMP threads wait passively unless the
    environment says otherwise (`OMP_WAIT_POLICY`, read when torch loads, after this): on a CPU shared
    with other jobs, spinning threads made one Hessian-vector product 7-12x slower (docs/analysis.md)."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()
