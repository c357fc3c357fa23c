"""Shared plumbing for the sample-run trainers: determinism, the Recorder, one training step."""

import contextlib
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

# Sized for a committed sample run of a few hundred KB: short ring and tail, sparse baselines.
RECORDER_DEFAULTS = {"ring_size": 6, "tail": 6, "baseline_every": 500, "max_bytes": 1_500_000}


@contextlib.contextmanager
def deterministic(seed: int):
    """Seed torch and pin one intra-op thread (bit-for-bit tensors); restore both afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def fresh_dir(out_dir: Path | str, name: str) -> Path:
    """The run folder out_dir/name, emptied first so a rebuild never mixes two recordings."""
    path = Path(out_dir) / name
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def recorder(model, optimizer, path: Path, *, factory: str, kwargs: dict, loss: str,
             task: dict, seed: int, probe: dict | None = None, detector: dict | None = None,
             **settings):
    """Construct the project's Recorder with the sample-run defaults (imported lazily)."""
    from forensics.record.recorder import Recorder

    options = dict(RECORDER_DEFAULTS)
    options.update(settings)
    extra = {}
    if probe is not None:
        extra["probe"] = probe
    if detector is not None:
        extra["detector"] = detector
    return Recorder(model, optimizer, path, model_factory=factory, model_kwargs=kwargs,
                    loss=loss, task=task, seed=seed, **extra, **options)


def mse_step(model, optimizer, rec, x: torch.Tensor, y: torch.Tensor) -> float:
    """One optimizer step on (x, y) with mean-reduced MSE, observed by the recorder."""
    optimizer.zero_grad(set_to_none=False)
    loss = F.mse_loss(model(x), y)
    loss.backward()
    if rec is not None:
        rec.observe(loss, {"x": x, "y": y})
    optimizer.step()
    return loss.item()
