"""Read a run directory: `open_run(path) -> Run` with manifest, steps, spikes, snapshots, events.

Reading executes no code from the run: JSON, Parquet and safetensors only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from forensics.rundir.events import read_events
from forensics.rundir.format import SNAPSHOTS_DIR, MissingFileError, is_temp
from forensics.rundir.manifest import read_manifest
from forensics.rundir.snapshots import Snapshot, load_snapshot
from forensics.rundir.steps import read_steps


def _num(value):
    """Event numbers may be stored as "nan"/"inf" strings (JSON has no NaN)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


@dataclass(frozen=True)
class Spike:
    """One spike as seen by the online detector (`spike` event) or `detect_offline`."""

    spike_id: int
    onset: int
    peak: int
    end: int | None
    peak_loss: float
    baseline: float
    magnitude: float
    signal: str = "loss"
    nonfinite: bool = False

    @classmethod
    def from_event(cls, e: dict) -> "Spike":
        return cls(spike_id=int(e["spike_id"]), onset=int(e["onset"]), peak=int(e["peak"]),
                   end=None if e.get("end") is None else int(e["end"]),
                   peak_loss=float(_num(e["peak_loss"])), baseline=float(_num(e["baseline"])),
                   magnitude=float(_num(e["magnitude"])), signal=e.get("signal", "loss"),
                   nonfinite=bool(e.get("nonfinite", False)))


@dataclass(frozen=True)
class SnapshotInfo:
    """Where a snapshot is and what it is, without reading it; `.load()` reads the tensors."""

    step: int
    role: str
    spike_id: int | None
    path: Path
    bytes: int

    def load(self, device: str = "cpu", *, include=None) -> Snapshot:
        """Read the tensors (optionally only `include` kinds: param, grad, state, batch)."""
        return load_snapshot(self.path, device=device, include=include)


class Run:
    """A run directory opened for reading; everything is read lazily and cached."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, run_id={self.run_id!r})"

    @property
    def run_id(self) -> str:
        return self.manifest.get("run_id", self.path.name)

    @cached_property
    def events(self) -> list[dict]:
        """Every event of `events.jsonl`, in order (a torn last line ignored)."""
        return read_events(self.path)

    @cached_property
    def steps(self):
        """All per-step scalars as one pyarrow Table, sorted by step."""
        return read_steps(self.path)

    @cached_property
    def spikes(self) -> list[Spike]:
        """Closed spikes, plus spikes still open when the run ended (end=None)."""
        closed = {e["spike_id"]: Spike.from_event(e) for e in self.events if e.get("type") == "spike"}
        for e in self.events:
            if e.get("type") == "spike_open" and e["spike_id"] not in closed:
                loss = float(_num(e.get("loss", float("nan"))))
                base = float(_num(e.get("baseline", float("nan"))))
                closed[e["spike_id"]] = Spike(
                    spike_id=int(e["spike_id"]), onset=int(e["step"]), peak=int(e["step"]),
                    end=None, peak_loss=loss, baseline=base,
                    magnitude=loss / base if base else float("nan"),
                    signal=e.get("signal", "loss"), nonfinite=loss != loss or abs(loss) == float("inf"))
        return sorted(closed.values(), key=lambda s: s.onset)

    @cached_property
    def snapshots(self) -> list[SnapshotInfo]:
        """Snapshots recorded in events whose file exists, sorted by step.

        Files present on disk but missing from the log (a crash between rename and append)
        are included too, with role read from their metadata.
        """
        folder = self.path / SNAPSHOTS_DIR
        infos: dict[int, SnapshotInfo] = {}
        for e in self.events:
            if e.get("type") != "snapshot":
                continue
            p = self.path / e["file"]
            if p.is_file():
                infos[int(e["step"])] = SnapshotInfo(
                    step=int(e["step"]), role=e.get("role", ""), spike_id=e.get("spike_id"),
                    path=p, bytes=int(e.get("bytes", p.stat().st_size)))
        if folder.is_dir():
            from forensics.rundir.snapshots import read_meta

            for p in folder.glob("step-*.safetensors"):
                if is_temp(p):
                    continue
                try:
                    step = int(p.stem.split("-")[1])
                except (IndexError, ValueError):
                    continue
                if step not in infos:
                    meta = read_meta(p)
                    infos[step] = SnapshotInfo(step=step, role=str(meta.get("role", "")),
                                               spike_id=meta.get("spike_id"), path=p,
                                               bytes=p.stat().st_size)
        return sorted(infos.values(), key=lambda s: s.step)

    def snapshot(self, step: int) -> SnapshotInfo:
        """The snapshot of `step`; KeyError listing what exists if there is none."""
        for info in self.snapshots:
            if info.step == step:
                return info
        steps = [s.step for s in self.snapshots]
        raise KeyError(f"{self.path}: no snapshot of step {step} (have {steps[:20]}"
                       f"{'...' if len(steps) > 20 else ''})")


def open_run(path: Path | str) -> Run:
    """Open a run directory for reading. Raises `RunFormatError` (a ValueError) naming the file
    when run.json is missing, unparseable, or from a newer format version.

    Example:
        >>> run = open_run("runs/my-run")          # doctest: +SKIP
        >>> run.spikes[0].onset, run.snapshots[0].load().params.keys()  # doctest: +SKIP
    """
    if not Path(path).exists():
        raise MissingFileError(path, "run directory does not exist")
    return Run(path)
