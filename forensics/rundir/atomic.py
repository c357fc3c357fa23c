"""Atomic file writes: write to a temp file in the same folder, fsync, rename into place."""

from __future__ import annotations

import itertools
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from forensics.rundir.format import TMP_MARK

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
    """Write `obj` as indented JSON to `final` atomically."""
    write_bytes(final, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), fsync=fsync)
