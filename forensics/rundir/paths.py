"""Where a run's files may be: every path a reader opens or a writer fills resolves inside the run.

A stranger's run can name files by relative paths (`events.jsonl` entries) and can hold
symbolic links (a `snapshots/` linked to another run, a chunk linked to `/etc/...`). Both are
resolved here, once, and refused with `OutsideRunError` naming the entry when they leave the
run directory. Links that stay inside the run are allowed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from forensics.rundir.format import OutsideRunError


def root_of(run_dir: Path | str) -> Path:
    """The run directory with every link resolved (what "inside" is measured against)."""
    return Path(run_dir).resolve()


def inside(run_dir: Path | str, entry: Path | str, *, what: str = "file") -> Path:
    """`run_dir / entry`, checked to resolve inside the run directory; returns it unresolved
    (names stay as the run spells them). `entry` is relative to the run; an absolute path is
    refused unless it resolves inside.

    Raises:
        OutsideRunError: naming `run_dir / entry` when the path, after following every link,
            is outside the run directory, or cannot be resolved (a link loop).
    """
    root = root_of(run_dir)
    path = Path(run_dir) / entry
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as e:  # a link loop
        raise OutsideRunError(path, f"{what} {str(entry)!r} cannot be resolved ({e})") from None
    if real != root and root not in real.parents:
        raise OutsideRunError(path, f"{what} {str(entry)!r} resolves outside the run directory "
                                    f"(to {real}); refused")
    return path


def is_regular_file(path: Path | str) -> bool:
    """True for a regular file (after links): never a FIFO, socket, device or folder, which
    would block or mislead a reader."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def folder_inside(run_dir: Path | str, name: str) -> Path | None:
    """The run's subfolder `name` if it exists (checked inside the run), else None.

    Raises:
        OutsideRunError: the folder is a link that leaves the run.
    """
    path = Path(run_dir) / name
    if not os.path.lexists(path):
        return None
    inside(run_dir, name, what=f"{name}/")
    return path if path.is_dir() else None
