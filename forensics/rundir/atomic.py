"""Atomic file writes: write to a temp file in the same folder, fsync, rename into place."""

from __future__ import annotations

import itertools
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from forensics.rundir.format import TMP_MARK
from forensics.rundir.jsonsafe import dumps

_counter = itertools.count()


def temp_path(final: Path | str) -> Path:
    """A fresh temp path beside `final`: `<name>.tmp-<pid>-<n>` (readers ignore these)."""
    final = Path(final)
    return final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}-{next(_counter)}")


def fsync_dir(folder: Path | str) -> None:
    """fsync a folder so a rename inside it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(final: Path | str, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path to write; on success fsync it and rename it to `final`.

    On any error the temp file is removed and the error propagates, so `final` is either
    the old content or the complete new content, never a half-written file.
    """
    final = Path(final)
    tmp = temp_path(final)
    try:
        yield tmp
        if fsync:
            fd = os.open(str(tmp), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    if fsync:
        fsync_dir(final.parent)


def write_bytes(final: Path | str, data: bytes, *, fsync: bool = True) -> None:
    """Write `data` to `final` atomically."""
    with atomic_path(final, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_with(final: Path | str, writer: Callable[[Path], None], *, fsync: bool = True) -> None:
    """Call `writer(temp_path)` and rename the result to `final` atomically."""
    with atomic_path(final, fsync=fsync) as tmp:
        writer(tmp)


def write_json(final: Path | str, obj, *, fsync: bool = True) -> None:
    """Write `obj` as indented JSON to `final` atomically (non-finite floats as "nan"/"inf" strings)."""
    write_bytes(final, (dumps(obj, indent=2) + "\n").encode(), fsync=fsync)


_TEMP_TAIL = re.compile(re.escape(TMP_MARK) + r"(\d+)-\d+$")


def clean_stale_temps(run_dir: Path | str, *, own: bool = False) -> list[Path]:
    """Delete the temp files interrupted writers left in a run (`<name>.tmp-<pid>-<n>` in the
    run folder, steps/, snapshots/, analysis/); return the paths removed.

    A temp file is stale when no process with its pid is alive (a writer killed with SIGKILL
    leaves one behind; readers ignore them, but they hold disk). Temp files of live processes,
    this one included, are kept: they may be writes in progress; with `own=True` this process's
    are removed too (the recorder, when it opens or closes a run and has no write in flight).
    Only regular files directly in those folders are touched, and only in folders that lie inside
    the run (links out are not followed). Call it when a run is opened for writing and when it is closed.
    """
    from forensics.rundir.format import ANALYSIS_DIR, SNAPSHOTS_DIR, STEPS_DIR
    from forensics.rundir.paths import is_regular_file, root_of

    root = root_of(run_dir)
    removed = []
    for name in ("", STEPS_DIR, SNAPSHOTS_DIR, ANALYSIS_DIR):
        folder = Path(run_dir) / name
        if not folder.is_dir() or (folder.resolve() != root and root not in folder.resolve().parents):
            continue
        for path in folder.iterdir():
            m = _TEMP_TAIL.search(path.name)
            if m is None or path.is_symlink() or not is_regular_file(path) or _alive(int(m.group(1)), own):
                continue
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:  # another cleaner got it first
                pass
    return removed


def _alive(pid: int, own: bool = False) -> bool:
    """Whether a process with this pid exists (on this machine); this process counts as gone with `own`."""
    if pid == os.getpid():
        return not own
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists but is not ours, or cannot tell: keep its files
    return True
