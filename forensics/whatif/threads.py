"""The CPU thread count of a replay: the recording's, so that float sums round the same way.

A CPU kernel splits its reductions (matmul, sums) over the intra-op threads, so one float32 step
computed with 1 thread and with 2 differs in the last bits; Adam at a low loss and a spike both
amplify that, and a transformer replay drifts past the self-check's tolerance within a few steps
(measured: the zoo GPT sample runs, recorded with 1 thread, replay exactly with 1 and are off by
1e-4 to 2e-4 relative with 2). `run.json` records `torch_threads` (docs/format.md)."""

from __future__ import annotations

import functools

import torch


def _recorded_on_cpu(manifest: dict) -> bool:
    return str(manifest.get("device") or "cpu").split(":")[0] == "cpu"


def pinned(replay, manifest: dict, device: torch.device, notes: list[str]):
    """`replay` wrapped to run with the recording's thread count (`manifest["torch_threads"]`) when
    the run was recorded on the CPU and is replayed there; the process's count is restored after
    each call. Appends one note to `notes` when it changes the count. Unchanged otherwise."""
    want = manifest.get("torch_threads")
    have = torch.get_num_threads()
    if device.type != "cpu" or not _recorded_on_cpu(manifest) or not want or want == have:
        return replay
    notes.append(f"replayed with {want} CPU thread(s), as recorded (this process uses {have}): "
                 "float sums over another thread count round differently")

    @functools.wraps(replay)
    def call(*args, **kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(want)
        try:
            return replay(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return call


def thread_cause(manifest: dict, device: torch.device) -> str | None:
    """A possible cause of a replay that does not reproduce: the run did not record its thread
    count (runs recorded before `torch_threads`) and this replay used more than one thread."""
    have = torch.get_num_threads()
    if device.type != "cpu" or not _recorded_on_cpu(manifest) or manifest.get("torch_threads") or have == 1:
        return None
    return (f"the run did not record its CPU thread count and the replay used {have}: float sums over "
            "another thread count round differently (replay under torch.set_num_threads(n) or "
            "OMP_NUM_THREADS=n with the recording's n, e.g. 1 for the sample runs)")


__all__ = ["pinned", "thread_cause"]
