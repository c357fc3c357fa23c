"""The run directory on the writing side: prepared for a new run, guarded while it is written (still
there, still the same folder, still a run), and rid of the temp files a killed writer left behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from forensics.rundir.atomic import clean_stale_temps
from forensics.rundir.format import ANALYSIS_DIR, EVENTS_FILE, MANIFEST_FILE, SNAPSHOTS_DIR, STEPS_DIR


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


def prepare_run_dir(run_dir: Path | str, overwrite: bool, resume: bool = False) -> bool:
    """Make `run_dir` ready for writing; True when it holds a run to resume (`resume` and a run.json
    there). ValueError if it holds a run and neither `overwrite` (which removes that run's files) nor
    `resume` is set. Stale temp files of killed writers (and of this process) are removed."""
    d = Path(run_dir)
    if resume and (d / MANIFEST_FILE).exists():
        clean_stale_temps(d, own=True)
        return True
    if (d / MANIFEST_FILE).exists():
        if not overwrite:
            raise ValueError(f"{d} already holds a run (run.json exists); pass resume=True to continue it "
                             "or overwrite=True to replace it")
        for name in (MANIFEST_FILE, EVENTS_FILE):
            (d / name).unlink(missing_ok=True)
        for name in (STEPS_DIR, SNAPSHOTS_DIR, ANALYSIS_DIR):
            shutil.rmtree(d / name, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(d, own=True)
    return False


__all__ = ["RunDirGuard", "prepare_run_dir"]
