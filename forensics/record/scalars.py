"""The cheap per-step scalars of a step row: norms from ring slots or live tensors, the update norm,
Adam's g²/v̂ ratio on a fixed subsample, the probe loss."""

from __future__ import annotations

import math

import torch

from forensics.record.lazy import Deferred, nan_to_none, sqrt
from forensics.record.ring import local

_SUBSAMPLE = 16384  # coordinates for the Adam ratio stats (format allows <= 65536)


def sqnorm_t(flat: torch.Tensor) -> torch.Tensor:
    """||flat||^2 as a 0-d tensor on flat's device, accumulated in at least float32 (no sync)."""
    if flat.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.vector_norm(flat, dtype=torch.float32).double().square()
    return torch.linalg.vector_norm(flat).double().square()  # squared in float64, as the format always did


def sqnorm(flat: torch.Tensor) -> float:
    """||flat||^2 as a Python float (one sync), accumulated in at least float32."""
    return float(sqnorm_t(flat))


class StepScalars:
    """Norms and ratios of one model's parameters, read from the ring when a slot holds the step.

    Every value is a 0-d device tensor handed to `deferred` (forensics.record.lazy.Deferred), which
    writes the Python number into the row when the recorder fetches (no host-device sync here)."""

    def __init__(self, ring, params: list[torch.Tensor], adam: bool, deferred: Deferred, summed=None):
        """`summed`: a `GlobalMean(..., mean=False)` when parameters are sharded over ranks (FSDP2): squared
        norms are then summed over the ranks (each holds a shard)."""
        self.ring, self.params, self.deferred, self.summed = ring, params, deferred, summed
        self._scratch = None  # lazily: flat buffers for update norms
        self._subsample = self._make_subsample() if ring is not None and adam else None

    def sq_norm(self, kind: str, slot: int | None, tensors: list):
        """||kind||_2^2 over all parameters (0-d tensor): from ring slot `slot`, else from the live
        `tensors` (None skipped); NaN (float) when there is none."""
        if slot is not None:
            return torch.stack([sqnorm_t(f) for f in self.ring.banks[kind].flats(slot).values()]).sum()
        tensors = [local(t.detach()) for t in tensors if t is not None]
        if not tensors:
            return math.nan
        norms = torch.stack([n.double() for n in torch._foreach_norm(tensors)])
        return torch.linalg.vector_norm(norms).square()  # sqrt at the fetch gives back this norm exactly

    def update_sq(self, slot: int, next_slot: int | None) -> torch.Tensor:
        """||theta_{t+1} - theta_t||^2 (0-d tensor): slot `next_slot` (or, at close, the live weights)
        minus `slot`. fp32/fp64 slots: one `torch.dist` per dtype (one pass, nothing written); otherwise
        a subtraction into a scratch buffer allocated once, then its norm in float32."""
        bank = self.ring.banks["param"]
        if next_slot is not None and all(dt in (torch.float32, torch.float64) for dt in bank.bufs):
            return torch.stack([torch.dist(b[next_slot], b[slot]).double().square()
                                for b in bank.bufs.values()]).sum()
        if self._scratch is None:
            flats = {dt: torch.empty_like(b[0]) for dt, b in bank.bufs.items()}
            self._scratch = (flats, list(bank.layout.views(flats).values()))
        flats, views = self._scratch
        if next_slot is None:
            torch._foreach_copy_(views, [local(p.detach()) for p in self.params])
        parts = []
        for dt, f in flats.items():
            a = f if next_slot is None else bank.bufs[dt][next_slot]
            torch.sub(a, bank.bufs[dt][slot], out=f)
            parts.append(sqnorm_t(f))
        return torch.stack(parts).sum()

    def update_norm(self, slot: int, next_slot: int | None) -> float:
        """||theta_{t+1} - theta_t|| as a float (one sync: used at close)."""
        return math.sqrt(float(self.update_sq(slot, next_slot)))

    def row(self, t: int, wall_time: float, probe, groups: list, opt_step, slot: int | None,
            columns: dict) -> dict:
        """Step t's row of steps/*.parquet, but for `loss` and `spike_id` (None), known only with the loss.
        `probe` and `opt_step` may be device tensors; `columns` are the hyperparameter columns."""
        d = self.deferred
        lr = groups[0].get("lr") if groups else None
        row = {"step": t, "wall_time": wall_time, "loss": math.nan,
               "lr": float(lr) if isinstance(lr, (int, float)) else None, "update_norm": None,
               "spike_id": None, "batch_rows": None, "micro_batches": None, **columns,
               "amp_skipped": None, "loss_scale": None, "logit_max": None, "log_z_mean": None,
               "attn_logit_max": None}
        d.put(row, "probe_loss", probe)
        self.put_norm(row, "grad_norm", self.sq_norm("grad", slot, [p.grad for p in self.params]))
        self.put_norm(row, "param_norm", self.sq_norm("param", slot, self.params))
        d.put(row, "optimizer_step", opt_step, int)
        median, frac = self.adam_ratio(slot, opt_step, groups)
        d.put(row, "adam_ratio_median", median, nan_to_none)
        d.put(row, "adam_ratio_frac_small", frac, nan_to_none)
        return row

    def put_norm(self, target, key, sq) -> None:
        """`target[key]` = the norm from the squared norm `sq` (summed over the shards' ranks), at
        the fetch."""
        (self.summed or self.deferred).put(target, key, sq, sqrt)

    def _make_subsample(self):
        """Fixed random coordinates (<= 65536) of the largest dtype buffer, for cheap Adam ratio stats."""
        dt, n = max(self.ring.layout.totals.items(), key=lambda kv: kv[1])
        gen = torch.Generator().manual_seed(0)
        idx = torch.randperm(n, generator=gen)[:_SUBSAMPLE].sort().values
        return dt, idx.to(self.ring.device)

    def adam_ratio(self, slot: int | None, opt_step, groups: list) -> tuple:
        """(median of g_t^2 / v-hat_{t-1}, fraction below 0.1) on the subsample, as 0-d tensors (NaN when
        no coordinate is valid); (None, None) for non-Adam, no slot, or before the first update."""
        if slot is None or self._subsample is None or "exp_avg_sq" not in self.ring.banks:
            return None, None
        if not isinstance(opt_step, torch.Tensor) and opt_step < 1:
            return None, None
        dt, idx = self._subsample
        g = self.ring.banks["grad"].bufs[dt][slot].index_select(0, idx).float()
        v = self.ring.banks["exp_avg_sq"].bufs[dt][slot].index_select(0, idx).float()
        beta2 = float(groups[0]["betas"][1])
        if isinstance(opt_step, torch.Tensor):  # step < 1: no update yet, the ratio is undefined (NaN)
            step = opt_step.detach().to(device=g.device, dtype=torch.float32)
            corr = torch.where(step >= 1, 1.0 - beta2 ** step, torch.nan)
        else:
            corr = 1.0 - beta2 ** opt_step
        rho = g.square_().div_(v.div_(corr))  # 0/0 -> nan
        ok = ~torch.isnan(rho)
        frac = ((rho < 0.1) & ok).sum().double() / ok.sum().double()  # 0/0 -> nan
        return rho.nanmedian(), frac


from forensics.record.probe import Probe  # noqa: E402  (moved; kept importable here)


__all__ = ["Probe", "StepScalars", "sqnorm"]
