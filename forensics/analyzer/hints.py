"""Hints that read the run's hyperparameters: never advise a value the run already uses.

A spec's `hint` is plain text or a tuple of parts, each a string (said as is) or an `Advice`:
one setting to change, with the value to change it to computed from the run's current value
(`SpikeContext.hparams`, from `run_settings(run.json)`). An advice whose target equals the
run's value, or that has no target for it (e.g. "lower β₂" on a run already at 0.95 with
nowhere sensible to go), is left out; when the run's value is unknown the advice says the usual
value. `render(hint, hparams)` is the one place a fired finding's hint is written
(`Mechanism.run`), for every rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

Z_LOSS_LOSSES = {"forensics.zoo.gpt:next_token_z_loss": 1e-4}  # loss name -> its z-loss weight
PLAIN_LOSSES = ("cross_entropy", "mse", "forensics.zoo.gpt:next_token_loss")


@dataclass(frozen=True)
class Advice:
    """One change of one setting, said against the run's value.

    `setting`: a key of `run_settings` (lr, beta1, beta2, eps, weight_decay, momentum, qk_norm,
    z_loss, attention). `to(now)`: the value to change to from the run's value `now` (never
    None: it is only called on a known value), or None when there is no change worth advising
    from there. `text`: said when the run's value is known, with `{now}` and `{to}` (formatted
    with `:g` for numbers). `usual`: said when the run's value is unknown (e.g. "lower β₂ (0.95
    is usual)"); empty: the advice is left out then.
    """

    setting: str
    to: Callable[[Any], Any]
    text: str
    usual: str = ""

    def say(self, hparams: dict) -> str:
        """This advice for a run with `hparams`, or "" when it does not apply."""
        now = hparams.get(self.setting)
        if now is None:
            return self.usual
        target = self.to(now)
        if target is None or target == now:
            return ""
        return self.text.format(now=_fmt(now), to=_fmt(target))


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return f"{value:g}"
    return str(value)


def render(hint, hparams: dict) -> str:
    """The hint for a run with `hparams`: the parts that apply, joined by "; "."""
    if isinstance(hint, str):
        return hint
    parts = [p if isinstance(p, str) else p.say(hparams) for p in hint]
    return "; ".join(p for p in parts if p)


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def run_settings(manifest: dict) -> dict[str, Any]:
    """The hyperparameters a hint may read, from run.json: param group 0's lr, beta1, beta2,
    eps, weight_decay, momentum (as recorded at the start); the zoo GPT's `qk_norm` and
    `attention` (its factory kwargs; absent for other models); `z_loss`, the z-loss weight of
    the loss (0 for a plain cross-entropy / MSE). A value the run does not tell is left out."""
    optimizer = manifest.get("optimizer") or {}
    group = (optimizer.get("param_groups") or [{}])[0] or {}
    out: dict[str, Any] = {}
    for name in ("lr", "eps", "weight_decay", "momentum"):
        if _number(group.get(name)) is not None:
            out[name] = _number(group[name])
    betas = group.get("betas")
    if isinstance(betas, (list, tuple)) and len(betas) == 2:
        out["beta1"], out["beta2"] = _number(betas[0]), _number(betas[1])
    if "momentum" in out and "sgd" not in str(optimizer.get("class", "")).lower():
        del out["momentum"]
    model = manifest.get("model") or {}
    if str(model.get("factory", "")).startswith("forensics.zoo.gpt:"):
        kwargs = model.get("kwargs") or {}
        out["qk_norm"] = bool(kwargs.get("qk_norm", False))
        out["attention"] = str(kwargs.get("attention", "sdpa"))
    loss = manifest.get("loss")
    if loss in Z_LOSS_LOSSES:
        out["z_loss"] = Z_LOSS_LOSSES[loss]
    elif loss in PLAIN_LOSSES:
        out["z_loss"] = 0.0
    return {k: v for k, v in out.items() if v is not None}
