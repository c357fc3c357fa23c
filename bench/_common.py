"""Shared helpers for the comparison benchmarks: machine facts, tables, result files, test problems.

Every script prints its table and writes ``bench/results/<name>.md`` through :func:`write_result`,
so the header (machine, versions, date) is produced in one place.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------- machine and versions

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_lines(libs=("safetensors", "numpy", "scipy", "PyHessian", "hessian-eigenthings")) -> list[str]:
    """Markdown bullet lines describing where and with what the numbers were taken."""
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines()
                      if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    cuda = torch.cuda.is_available()
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} CPU cores (nproc), {cpu_model()}{mem}, "
        f"{platform.platform()}; torch threads {torch.get_num_threads()}",
        f"- device: {'CUDA ' + torch.cuda.get_device_name(0) if cuda else 'CPU only (no GPU in this session)'}",
        "- the machine was shared with other jobs while this ran: timings are noisy; methods were "
        "interleaved and medians are reported",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        + ", ".join(f"{lib} {_version(lib)}" for lib in libs),
    ]


# ---------------------------------------------------------------- tables and result files

def fmt(v, digits: int = 3) -> str:
    """A table cell: floats with `digits` significant digits, ints with thousands separators."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A markdown table of `rows` (dicts) over `columns` (default: keys of the first row)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_result(name: str, title: str, intro: list[str], sections: list[tuple[str, str]],
                 libs=("safetensors", "numpy", "scipy", "PyHessian", "hessian-eigenthings")) -> Path:
    """Write bench/results/<name>.md: title, machine facts, intro bullets, then (heading, body) sections."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", "", *machine_lines(libs), *intro, ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body, ""]
    text = "\n".join(parts)
    path = RESULTS / f"{name}.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    print(text)
    return path


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Timer:
    """`with Timer() as t: ...; t.s` — wall seconds."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


# ---------------------------------------------------------------- Hessian test problems

def mlp(sizes, act=nn.Tanh) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def small_cnn(num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),      # (16, 8, 8)
        nn.Conv2d(16, 32, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),     # (32, 4, 4)
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.Tanh(), nn.Linear(64, num_classes))


PROBLEMS = {
    # name: (factory, input shape without batch, Adam lr of the warm-up: mid-training, not memorised)
    "MLP ~100k (100-256-256-10)": (lambda: mlp([100, 256, 256, 10]), (100,), 1e-3),
    "MLP ~1M (512-1024-512-10)": (lambda: mlp([512, 1024, 512, 10]), (512,), 1e-4),
    "CNN (2 conv + 2 fc, 16x16x3)": (lambda: small_cnn(), (3, 16, 16), 1e-3),
}


def hessian_problem(name: str, *, n: int = 512, train_steps: int = 30, seed: int = 0):
    """(model, x, y): synthetic 10-class data from a random teacher, float32, `n` samples.

    The model is trained `train_steps` Adam steps first so the Hessian is that of a model in
    training (at init the top of the spectrum is a near-degenerate block of c−1 outliers); the
    1M MLP gets a smaller lr because at 1e-3 it memorises the 512 samples in 10 steps.
    """
    factory, shape, lr = PROBLEMS[name]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = factory()
    x = torch.randn(n, *shape, generator=g)
    teacher = torch.randn(x[0].numel(), 10, generator=g)
    y = (x.reshape(n, -1) @ teacher + 0.5 * torch.randn(n, 10, generator=g)).argmax(1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(train_steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, x, y


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
