"""Shared by the multi-process tests: start `world` spawned workers on a free local port and wait,
failing the test (workers killed) past a deadline; the DDP example module."""

import importlib.util
import socket
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args, world: int = 2, timeout: float = 120) -> None:
    """Run fn(rank, world, port, *args) in `world` spawned processes; pytest.fail past `timeout` s."""
    ctx = mp.start_processes(fn, args=(world, free_port(), *args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{world} workers did not finish within {timeout} s (ranks out of step?)")


def example_ddp():
    """examples/ddp.py as a module (its `train`, `make_model`, `global_batch`, `SIZES`)."""
    spec = importlib.util.spec_from_file_location("forensics_example_ddp", ROOT / "examples" / "ddp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
