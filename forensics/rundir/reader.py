"""Read a run directory: `open_run(path) -> Run` with manifest, steps, spikes, snapshots, events.

Reading executes no code from the run: JSON, Parquet and safetensors only. Every file read
lies inside the run directory (forensics.rundir.paths). run.json and events.jsonl are checked
once, here: a wrong one raises `RunFormatError` naming it. One bad steps chunk or snapshot
file is skipped and named in `Run.notes`; the rest of the run still reads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from forensics.rundir.events import read_events
from forensics.rundir.format import (
    DIGEST_KEY, REPLAY_RTOL, SNAPSHOTS_DIR, MissingFileError, RunFormatError, is_temp, snapshot_name,
)
from forensics.rundir.manifest import Manifest, load_manifest
from forensics.rundir.paths import folder_inside, inside
from forensics.rundir.snapshots import Snapshot, load_snapshot, read_meta
from forensics.rundir.spikes import Spike, spikes_from_events
from forensics.rundir.steps import read_steps

__all__ = ["Run", "SnapshotInfo", "Spike", "open_run"]


@dataclass(frozen=True)
class SnapshotInfo:
    """Where a snapshot is and what it is, without reading it; `.load()` reads the tensors."""

    step: int
    role: str
    spike_id: int | None
    path: Path
    bytes: int

    def load(self, device: str = "cpu", *, include=None) -> Snapshot:
        """Read the tensors (optionally only `include` kinds: param, grad, state, batch),
        after checking the file's digest (`Snapshot.verified`; CorruptFileError on mismatch)."""
        return load_snapshot(self.path, device=device, include=include)


class Run:
    """A run directory opened for reading; run.json is read and checked at once, everything
    else lazily (and cached). `notes` collects what was skipped or tolerated, one sentence
    each naming the file, as the parts are read."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.info: Manifest = load_manifest(self.path)
        self.notes: list[str] = []
        self._gaps: list = []
        self._unreadable: dict[Path, str] = {}  # snapshot file -> why it was skipped

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, run_id={self.run_id!r})"

    @cached_property
    def manifest(self) -> dict:
        """run.json as a JSON object (checked; `info` is the same, typed)."""
        return self.info.to_dict()

    @property
    def run_id(self) -> str:
        """run.json's run_id, or the folder's name when it has none."""
        return self.info.run_id or self.path.name

    @cached_property
    def events(self) -> list[dict]:
        """Every event of `events.jsonl`, in order, checked (a torn last line dropped, noted)."""
        return read_events(self.path, notes=self.notes)

    @cached_property
    def steps(self):
        """All per-step scalars as one pyarrow Table, sorted by step (bad chunks skipped, noted
        here and listed in `steps_gaps`)."""
        return read_steps(self.path, notes=self.notes, gaps=self._gaps)

    @property
    def steps_gaps(self) -> list:
        """The step ranges lost with skipped chunks (`rundir.steps.StepsGap`), after `steps` is read."""
        self.steps  # noqa: B018 — reading the steps finds the gaps
        return list(self._gaps)

    @cached_property
    def spikes(self) -> list[Spike]:
        """Closed spikes, plus spikes still open when the run ended (end=None)."""
        return spikes_from_events(self.events)

    @cached_property
    def snapshots(self) -> list[SnapshotInfo]:
        """Snapshots recorded in events whose file is there and has a readable header, sorted
        by step. Files present on disk but missing from the log (a crash between rename and
        append) are included too, with role read from their metadata. A file that is not a
        regular file or has a broken header is skipped with a note naming it."""
        folder = folder_inside(self.path, SNAPSHOTS_DIR)
        last = {e["step"]: e for e in self.events if e.get("type") == "snapshot"}  # a rewrite wins
        listed = [(step, e, self.path / e["file"]) for step, e in last.items()]  # read_events checked them
        on_disk = [(_step_of(p), None, p)
                   for p in (sorted(folder.glob("step-*.safetensors")) if folder is not None else ())]
        for _, _, p in on_disk:
            if p.is_symlink():  # the folder is inside; only a link can lead out
                inside(self.path, Path(SNAPSHOTS_DIR) / p.name, what="snapshot file")
        infos: dict[int, SnapshotInfo] = {}
        metas: dict[Path, dict | None] = {}
        for step, event, p in listed + on_disk:
            if step is None or step in infos:
                continue
            if not os.path.lexists(p):
                self.notes.append(f"{p}: listed in events.jsonl but missing")
                continue
            if p not in metas:
                metas[p] = _header(p, self.notes, self._unreadable)
            meta = metas[p]
            if meta is None:
                continue
            event = event or {"role": str(meta.get("role", "")), "spike_id": meta.get("spike_id")}
            _note_replay_error(p, meta, self.notes)
            infos[step] = SnapshotInfo(step=step, role=event.get("role", ""), spike_id=event.get("spike_id"),
                                       path=p, bytes=event.get("bytes", p.stat().st_size))
        unverified = sum(1 for s in infos.values() if DIGEST_KEY not in metas[s.path])
        if unverified:
            self.notes.append(f"{unverified} of {len(infos)} snapshots record no digest (written before "
                              "digests): they load unverified")
        return sorted(infos.values(), key=lambda s: s.step)

    def unreadable_snapshot(self, step: int) -> tuple[Path, str] | None:
        """(path, why) when the snapshot file of `step` was skipped as unreadable, else None."""
        self.snapshots  # noqa: B018 — reading the snapshot list finds the skipped files
        path = self.path / SNAPSHOTS_DIR / snapshot_name(step)
        return (path, self._unreadable[path]) if path in self._unreadable else None

    def snapshot(self, step: int) -> SnapshotInfo:
        """The snapshot of `step`; KeyError listing what exists if there is none."""
        for info in self.snapshots:
            if info.step == step:
                return info
        steps = [s.step for s in self.snapshots]
        raise KeyError(f"{self.path}: no snapshot of step {step} (have {steps[:20]}"
                       f"{'...' if len(steps) > 20 else ''})")


def _step_of(path: Path) -> int | None:
    if is_temp(path):
        return None
    try:
        return int(path.stem.split("-")[1])
    except (IndexError, ValueError):
        return None


def _note_replay_error(path: Path, meta: dict, notes: list[str]) -> None:
    """A keyframe-mode snapshot whose replay did not reproduce the recorded losses: say so (its tensors
    are the replay's, not the step's; measurements from it are approximate or wrong)."""
    try:
        err = float(meta.get("replay_loss_rel_error", 0.0)) if meta.get("reconstructed") else 0.0
    except (TypeError, ValueError):
        err = math.inf
    if not err <= REPLAY_RTOL:
        notes.append(f"{path}: reconstructed by a keyframe replay whose recomputed losses differ from the "
                     f"recorded ones by up to {err:.3g} (relative, > {REPLAY_RTOL:g}): its tensors are the "
                     "replay's, not necessarily the step's (clipping, AMP, nondeterministic kernels or a "
                     "change outside the optimizer are not replayed); measurements from it are approximate")


def _header(path: Path, notes: list[str], unreadable: dict) -> dict | None:
    """The decoded metadata of a snapshot file, or None (with a note naming it, and why in
    `unreadable[path]`) when it is not a regular file or its header is unreadable."""
    try:
        return read_meta(path)
    except RunFormatError as e:
        notes.append(f"{path}: skipped ({e.reason}); the other snapshots are read")
        unreadable[path] = e.reason
        return None


def open_run(path: Path | str) -> Run:
    """Open a run directory for reading. Raises `RunFormatError` (a ValueError) naming the file
    when run.json is missing, unparseable, has a key of the wrong type, or is from a newer
    format version. Later reads raise it for events.jsonl and for files outside the run.

    Example:
        >>> run = open_run("runs/my-run")          # doctest: +SKIP
        >>> run.spikes[0].onset, run.snapshots[0].load().params.keys()  # doctest: +SKIP
    """
    if not Path(path).exists():
        raise MissingFileError(path, "run directory does not exist")
    return Run(path)
