"""The cheap per-step scalars of a step row: norms from ring slots or live tensors, the update norm,
Adam's g²/v̂ ratio on a fixed subsample, the probe loss."""

from __future__ import annotations

import math

import torch

from forensics.record.optim import hparam_columns

_SUBSAMPLE = 16384  # coordinates for the Adam ratio stats (format allows <= 65536)


def sqnorm(flat: torch.Tensor) -> float:
    """||flat||^2, accumulated in at least float32."""
    if flat.dtype in (torch.float16, torch.bfloat16):
        return float(torch.linalg.vector_norm(flat, dtype=torch.float32)) ** 2
    return float(torch.linalg.vector_norm(flat)) ** 2


class StepScalars:
    """Norms and ratios of one model's parameters, read from the ring when a slot holds the step."""

    def __init__(self, ring, params: list[torch.Tensor], adam: bool):
        self.ring, self.params = ring, params
        self._scratch = None  # lazily: flat buffers for update norms
        self._subsample = self._make_subsample() if ring is not None and adam else None

    def norm(self, kind: str, slot: int | None, tensors: list) -> float:
        """||kind||_2 over all parameters: from ring slot `slot`, else from the live `tensors`
        (None skipped)."""
        if slot is not None:
            return math.sqrt(sum(sqnorm(f) for f in self.ring.banks[kind].flats(slot).values()))
        tensors = [t.detach() for t in tensors if t is not None]
        if not tensors:
            return math.nan
        norms = [n.double() for n in torch._foreach_norm(tensors)]
        return float(torch.linalg.vector_norm(torch.stack(norms)))

    def update_norm(self, slot: int, next_slot: int | None) -> float:
        """||theta_{t+1} - theta_t||: slot `next_slot` (or, at close, the live weights) minus `slot`.

        One vectorised subtraction per dtype into a scratch buffer allocated once.
        """
        bank = self.ring.banks["param"]
        if self._scratch is None:
            flats = {dt: torch.empty_like(b[0]) for dt, b in bank.bufs.items()}
            self._scratch = (flats, list(bank.layout.views(flats).values()))
        flats, views = self._scratch
        if next_slot is None:
            torch._foreach_copy_(views, [p.detach() for p in self.params])
        sq = 0.0
        for dt, f in flats.items():
            a = f if next_slot is None else bank.bufs[dt][next_slot]
            torch.sub(a, bank.bufs[dt][slot], out=f)
            sq += sqnorm(f)
        return math.sqrt(sq)

    def row(self, t: int, wall_time: float, probe: float | None, groups: list, opt_step: int,
            slot: int | None) -> dict:
        """Step t's row of steps/*.parquet, but for `loss` (nan) and `spike_id` (None), known only
        with the loss."""
        median, frac = self.adam_ratio(slot, opt_step, groups)
        lr = groups[0].get("lr") if groups else None
        return {"step": t, "wall_time": wall_time, "loss": math.nan, "probe_loss": probe,
                "lr": float(lr) if isinstance(lr, (int, float)) else None,
                "grad_norm": self.norm("grad", slot, [p.grad for p in self.params]),
                "param_norm": self.norm("param", slot, self.params), "update_norm": None,
                "optimizer_step": opt_step, "adam_ratio_median": median, "adam_ratio_frac_small": frac,
                "spike_id": None, "batch_rows": None, "micro_batches": None, **hparam_columns(groups),
                "amp_skipped": None, "loss_scale": None, "logit_max": None, "log_z_mean": None,
                "attn_logit_max": None}

    def _make_subsample(self):
        """Fixed random coordinates (<= 65536) of the largest dtype buffer, for cheap Adam ratio stats."""
        dt, n = max(self.ring.layout.totals.items(), key=lambda kv: kv[1])
        gen = torch.Generator().manual_seed(0)
        idx = torch.randperm(n, generator=gen)[:_SUBSAMPLE].sort().values
        return dt, idx.to(self.ring.device)

    def adam_ratio(self, slot: int | None, opt_step: int, groups: list) -> tuple:
        """(median of g_t^2 / v-hat_{t-1}, fraction below 0.1) on the subsample; (None, None) if unknown."""
        if slot is None or self._subsample is None or opt_step < 1 or "exp_avg_sq" not in self.ring.banks:
            return None, None
        dt, idx = self._subsample
        g = self.ring.banks["grad"].bufs[dt][slot].index_select(0, idx).float()
        v = self.ring.banks["exp_avg_sq"].bufs[dt][slot].index_select(0, idx).float()
        beta2 = float(groups[0]["betas"][1])
        rho = g.square_().div_(v.div_(1.0 - beta2 ** opt_step))  # 0/0 -> nan
        valid = int((~torch.isnan(rho)).sum())
        if valid == 0:
            return None, None
        return float(rho.nanmedian()), float((rho < 0.1).sum()) / valid


from forensics.record.probe import Probe  # noqa: E402  (moved; kept importable here)


__all__ = ["Probe", "StepScalars", "sqnorm"]
