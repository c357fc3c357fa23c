"""Counterfactual changes: parse `beta2=0.95`, `lr=x0.5`, `lr=hold` (the first replayed step's
lr throughout: the schedule switched off), `eps=1e-6`, `clip=1.0`,
`skip_batch=400`, `restore_optimizer` (several joined by `+`), and apply one to the replay's
per-step inputs. A change holds from the first replayed step on, for every param group."""

from __future__ import annotations

import math
from dataclasses import dataclass

# hyperparameters a change may set: name -> (group key, index inside it or None)
HPARAMS = {"lr": ("lr", None), "eps": ("eps", None), "weight_decay": ("weight_decay", None),
           "momentum": ("momentum", None), "beta1": ("betas", 0), "beta2": ("betas", 1)}
OTHER = ("clip", "skip_batch", "restore_optimizer")


class ChangeError(ValueError):
    """A change that cannot be parsed or does not apply to this run's optimizer."""


@dataclass(frozen=True)
class Edit:
    """One edit: `name` set to `value`, or multiplied by it when `relative` (`lr=x0.5`)."""

    name: str
    value: float | None = None
    relative: bool = False
    hold: bool = False  # keep the value of the first replayed step (`lr=hold`: no schedule)

    def text(self) -> str:
        """How the edit is written (`lr=x0.5`, `skip_batch=400`, `lr=hold`)."""
        if self.hold:
            return f"{self.name}=hold"
        if self.name == "restore_optimizer":
            return self.name
        if self.name == "skip_batch":
            return f"skip_batch={int(self.value)}"
        return f"{self.name}={'x' if self.relative else ''}{self.value:g}"


@dataclass(frozen=True)
class Change:
    """A counterfactual: one or more edits applied together; `text` is how it is written."""

    edits: tuple[Edit, ...]

    @property
    def text(self) -> str:
        """How the change is written: its edits joined by `+` ("none" for no edit)."""
        return "+".join(e.text() for e in self.edits) or "none"

    @property
    def skips(self) -> set[int]:
        """The steps whose batch is skipped."""
        return {int(e.value) for e in self.edits if e.name == "skip_batch"}

    @property
    def clip(self) -> float | None:
        """The max-norm to clip to (the last `clip=` edit), or None."""
        found = [e.value for e in self.edits if e.name == "clip"]
        return found[-1] if found else None

    @property
    def restores_optimizer(self) -> bool:
        """Whether the change keeps the optimizer state where the recording reset it."""
        return any(e.name == "restore_optimizer" for e in self.edits)

    def apply_groups(self, groups: list[dict], first: list[dict] | None = None) -> list[dict]:
        """Recorded per-group hyperparameters with this change's edits applied (new dicts);
        `first`: the groups of the first replayed step (what `=hold` keeps).

        Raises ChangeError when a group lacks the hyperparameter (e.g. beta2 for SGD)."""
        out = []
        for gi, g in enumerate(groups):
            g = {**g}
            for e in self.edits:
                if e.name not in HPARAMS:
                    continue
                key, idx = HPARAMS[e.name]
                if key not in g:
                    raise ChangeError(f"{e.text()}: this optimizer's param groups have no {key!r} "
                                      f"(they have {sorted(k for k in g if k != 'params')})")
                old = g[key] if idx is None else g[key][idx]
                if e.hold:
                    src = (first or groups)[gi][key]
                    new = src if idx is None else src[idx]
                else:
                    new = float(old) * e.value if e.relative else e.value
                if idx is None:
                    g[key] = new
                else:
                    seq = list(g[key])
                    seq[idx] = new
                    g[key] = seq
            out.append(g)
        return out


NONE = Change(())


def parse_change(text: str) -> Change:
    """`"beta2=0.95"`, `"lr=x0.5"`, `"eps=1e-6+clip=1"`, `"skip_batch=400"`, `"restore_optimizer"`.

    Raises ChangeError naming the part that is wrong and what is accepted.
    """
    if not isinstance(text, str) or not text.strip():
        raise ChangeError("empty change")
    edits = []
    for part in text.split("+"):
        part = part.strip()
        name, eq, raw = part.partition("=")
        name = name.strip().lower().replace("β₂", "beta2").replace("β₁", "beta1")
        if name == "restore_optimizer" and not eq:
            edits.append(Edit(name))
            continue
        if name not in HPARAMS and name not in OTHER:
            raise ChangeError(f"unknown change {part!r}: use one of {', '.join([*HPARAMS, *OTHER])} "
                              "(e.g. beta2=0.95, lr=x0.5, lr=hold, eps=1e-6, clip=1.0, skip_batch=400, "
                              "restore_optimizer)")
        if not eq or not raw.strip():
            raise ChangeError(f"change {part!r} needs a value: {name}=VALUE")
        raw = raw.strip()
        if raw == "hold" and name in HPARAMS:
            edits.append(Edit(name, hold=True))
            continue
        relative = raw[:1] in ("x", "*", "×")
        try:
            value = float(raw[1:] if relative else raw)
        except ValueError:
            raise ChangeError(f"change {part!r}: {raw!r} is not a number (or xFACTOR)") from None
        if not math.isfinite(value) or (value < 0 and name != "skip_batch"):
            raise ChangeError(f"change {part!r}: the value must be a finite number ≥ 0")
        if name == "skip_batch" and (relative or value != int(value) or value < 0):
            raise ChangeError(f"change {part!r}: skip_batch takes a step number")
        if name == "clip" and (relative or value <= 0):
            raise ChangeError(f"change {part!r}: clip takes a max-norm > 0")
        if name in ("beta1", "beta2") and not relative and not value < 1:
            raise ChangeError(f"change {part!r}: {name} must be in [0, 1)")
        edits.append(Edit(name, value, relative))
    return Change(tuple(edits))
