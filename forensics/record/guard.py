"""The run directory on the writing side: prepared for a new run, guarded while it is written (still
there, still the same folder, still a run), and rid of the temp files a killed writer left behind."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from forensics.rundir.format import ANALYSIS_DIR, EVENTS_FILE, MANIFEST_FILE, SNAPSHOTS_DIR, STEPS_DIR, TMP_MARK

_TMP_PID = re.compile(re.escape(TMP_MARK) + r"(\d+)-\d+$")


class RunDirGuard:
    """Remembers which folder the run started in (device and inode), so that a run directory deleted,
    replaced or stripped of `run.json` mid-run is noticed before anything is written into it."""

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        st = os.stat(self.run_dir)
        self._identity = (st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        """None while the run directory is intact, else what happened to it.

        Only a definite answer stops a run: a folder or `run.json` that does not exist, or a folder
        that is not the one the run started in. Other errors (EIO, a busy network file system) are
        left to the write that follows, which fails and is retried.
        """
        try:
            st = os.stat(self.run_dir)
        except FileNotFoundError:
            return f"run directory {self.run_dir} was deleted during the run"
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != self._identity:
            return f"run directory {self.run_dir} was replaced by another folder during the run"
        try:
            os.stat(self.run_dir / MANIFEST_FILE)
        except FileNotFoundError:
            return f"run directory {self.run_dir} lost its {MANIFEST_FILE} during the run"
        except OSError:
            return None
        return None


def _in_use(path: Path) -> bool:
    """True if the temp file names another process that is still alive (its write may be in flight).

    Our own pid counts as stale: callers run when this process has nothing in flight.
    """
    m = _TMP_PID.search(path.name)
    if m is None:
        return False
    pid = int(m.group(1))
    if pid == os.getpid():
        return False
    if os.name != "posix":
        return True  # no cheap liveness probe: leave other processes' files alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temps(run_dir: Path | str) -> int:
    """Delete `*.tmp-<pid>-<n>` files that the recorder writes (run dir, steps/, snapshots/) whose
    writer is gone; returns how many. Call it only when this process has no write in flight there."""
    run_dir = Path(run_dir)
    removed = 0
    for folder in (run_dir, run_dir / STEPS_DIR, run_dir / SNAPSHOTS_DIR):
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for p in entries:
            if TMP_MARK in p.name and not _in_use(p):
                try:
                    p.unlink()
                    removed += 1
                except OSError:
                    pass
    return removed


def prepare_run_dir(run_dir: Path | str, overwrite: bool) -> None:
    """Make `run_dir` ready for a new run: ValueError if it holds one (run.json) unless `overwrite`,
    which removes that run's files; stale temp files of killed writers are removed."""
    d = Path(run_dir)
    if (d / MANIFEST_FILE).exists():
        if not overwrite:
            raise ValueError(f"{d} already holds a run (run.json exists); pass overwrite=True to replace it")
        for name in (MANIFEST_FILE, EVENTS_FILE):
            (d / name).unlink(missing_ok=True)
        for name in (STEPS_DIR, SNAPSHOTS_DIR, ANALYSIS_DIR):
            shutil.rmtree(d / name, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(d)


__all__ = ["RunDirGuard", "prepare_run_dir", "remove_stale_temps"]
