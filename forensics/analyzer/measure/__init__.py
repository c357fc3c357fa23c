"""Measurement engines: each turns one spike's snapshots into rows of an `Evidence`.

An engine is a module here (found by discovery; its name is the engine's name) with
`METRICS = {metric: (unit, meaning)}`, every metric it may write (a key `name@*` declares a
family `name@<suffix>`, e.g. one metric per layer and head), and
`measure(ev, scene) -> None`. It reads tensors through the `Scene` (which loads and caches
snapshots) and calls the pure math in `forensics.math`; it raises `Skip` with a reason when
it cannot run, which the pipeline records as that engine's skip reason. An engine that can
measure from `steps/` alone, without snapshots, sets `WITHOUT_SNAPSHOTS = True`. Engines run
with `scaled_dot_product_attention` on its math kernel (the one with a double backward), except
those that set `FORWARD_ONLY = True` (forward passes without gradients): they keep torch's
default kernel, ×10 faster than the math one on CPU (`attention_kernel`).

`ENGINES`: name -> module; `METRICS`: name -> its declared metrics (the catalog that makes an
`Evidence` strict, and the metric table of docs/analysis.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

import torch

from forensics.analyzer.evidence import SpikeContext
from forensics.analyzer.window import Window
from forensics.math.finite import nonfinite_count


class Skip(Exception):
    """An engine cannot run on this spike; the message says why (it becomes `reason`)."""


class Failed(Skip):
    """An engine could not measure because something broke (the model or loss could not be
    rebuilt, every step raised): recorded with `Evidence.fail`, so the spike is `not_analyzed`
    rather than `unexplained` when no rule can answer without it."""


@dataclass
class Scene:
    """Everything an engine may read for one spike: the run, the window, the replay."""

    run: Any
    context: SpikeContext
    window: Window
    replay: Any
    replay_error: str
    settings: Any
    device: torch.device
    _cache: dict = field(default_factory=dict)

    def require_replay(self):
        """The replay; Skip with the rebuild error when the model could not be rebuilt."""
        if self.replay is None:
            raise Failed(self.replay_error or "model not rebuilt")
        return self.replay

    def steps(self) -> tuple[int, ...]:
        """The selected snapshot steps, sorted; Skip when the spike has none."""
        steps = self.window.steps
        if not steps:
            raise Skip("no snapshots around this spike (capture budget or stride left none)")
        return steps

    def finite_steps(self) -> tuple[int, ...]:
        """Selected steps whose weights are all finite (curvature is undefined past a NaN);
        worked out once per spike."""
        key = ("finite_steps",)
        if key not in self._cache:  # every engine asks; the answer is the same for the spike
            self._cache[key] = tuple(s for s in self.steps() if not any(
                nonfinite_count(t) for t in self.snapshot(s).params.values()))
        steps = self._cache[key]
        if not steps:
            raise Skip("every selected snapshot has non-finite weights")
        return steps

    def each(self, ev, engine: str, steps, body) -> None:
        """Run `body(step) -> dict` for each step and add its row; a step that fails is noted
        in the engine's skip reason and the others still count."""
        failed = []
        for step in steps:
            try:
                row = body(step)
            except Skip:
                raise
            except Exception as exc:  # one bad step (e.g. an overflowing loss) loses only itself
                failed.append(f"step {step}: {type(exc).__name__}: {exc}")
                continue
            if row:
                ev.add_many(step, engine, row)
        if failed and len(failed) == len(tuple(steps)):
            raise Failed(f"{engine} engine failed at every step: " + "; ".join(failed[:3]))
        if failed:  # a failure too: it blocks a verdict only where a rule could not judge for it
            ev.fail(engine, f"{len(failed)} step(s) not measured; " + "; ".join(failed[:3]))

    def snapshot(self, step: int):
        """The snapshot of `step`, loaded once (on the CPU; engines move what they use)."""
        if step not in self._cache:
            self._cache[step] = self.run.snapshot(step).load("cpu")
        return self._cache[step]

    def params(self, step: int) -> dict[str, torch.Tensor]:
        """The snapshot's parameters of `step` on the replay device and dtype."""
        return self.require_replay().tensors(self.snapshot(step).params)

    def batch(self, step: int, *, max_samples: int | None = None,
              max_tokens: int | None = None) -> dict[str, torch.Tensor]:
        """The batch of `step` on the device; a seeded subsample when it has more rows. With
        `max_tokens`, a batch of token sequences (integer input (B, T, ...)) keeps at most
        ⌊max_tokens / T⌋ whole sequences (at least one)."""
        replay = self.require_replay()
        batch = replay.batch(self.snapshot(step))
        n = max_samples or self.settings.max_samples
        x = batch.get(replay.input_key)
        if max_tokens and x is not None and x.dim() >= 2 and not x.is_floating_point():
            n = min(n, max(1, max_tokens // x[0].numel()))
        rows = next(iter(batch.values())).shape[0]
        if rows <= n:
            return batch
        g = torch.Generator().manual_seed(self.settings.seed + step)
        idx = torch.randperm(rows, generator=g)[:n].to(self.device)
        return {k: v.index_select(0, idx) if v.ndim and v.shape[0] == rows else v
                for k, v in batch.items()}

    def hessian(self, step: int):
        """The batch-loss Hessian at `step` (`_hessian.SharedHessian` on ⌊HESSIAN_TOKENS/T⌋
        sequences of the batch), built once per spike and step and shared by the engines."""
        from forensics.analyzer.measure._hessian import HESSIAN_TOKENS, SharedHessian

        key = ("hessian", step)
        if key not in self._cache:
            self._cache[key] = SharedHessian(self.require_replay(), self.params(step),
                                             self.batch(step, max_tokens=HESSIAN_TOKENS))
        return self._cache[key]

    def hessian_steps(self) -> tuple[int, ...]:
        """The finite selected steps where the Hessian engines measure: at most
        `settings.hessian_snapshots` of them (`_hessian.hessian_steps`)."""
        from forensics.analyzer.measure._hessian import hessian_steps

        return hessian_steps(self.window, self.context.peak, self.finite_steps(),
                             getattr(self.settings, "hessian_snapshots", None))

    def lr(self, step: int) -> float:
        """The lr (param group 0) recorded in the snapshot of `step`, NaN if absent."""
        return float(self.snapshot(step).meta.get("lr", float("nan")))


def attention_kernel(engine):
    """The attention-kernel context an engine module runs in: torch's default for a
    `FORWARD_ONLY` engine, else the math kernel (`forensics.math.hvp.twice_differentiable_attention`)."""
    from contextlib import nullcontext

    from forensics.math.hvp import twice_differentiable_attention

    return nullcontext() if getattr(engine, "FORWARD_ONLY", False) else twice_differentiable_attention()


def _discover() -> dict:
    """Every engine module here: it must declare METRICS and define measure."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        metrics = getattr(module, "METRICS", None)
        if not callable(getattr(module, "measure", None)) or not isinstance(metrics, dict):
            raise TypeError(f"{module.__file__}: an engine defines measure(ev, scene) and METRICS")
        bad = [m for m, v in metrics.items() if not (isinstance(v, tuple) and len(v) == 2
                                                      and all(str(x).strip() for x in v))]
        if bad:
            raise ValueError(f"{module.__file__}: METRICS {bad} need (unit, meaning)")
        found[info.name] = module
    return found


ENGINES = _discover()  # engines import Scene/Skip from this module, so this comes last
METRICS: dict[str, dict[str, tuple[str, str]]] = {name: m.METRICS for name, m in ENGINES.items()}
