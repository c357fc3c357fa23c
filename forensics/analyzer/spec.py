"""A mechanism as data: the `SPEC = Mechanism(...)` that each rule file declares.

A rule file (`forensics/analyzer/rules/<name>.py`) holds a pure `judge(ev) -> Finding` and one
`SPEC`. Everything else that knows about mechanisms reads the specs: the registry
(`forensics.analyzer.rules.SPECS`), which engines run, the verdict's precedence, the app's
badge, colour and panel, and the tables of `docs/analysis.md` (`forensics.analyzer.doc_tables`).
Like a ruff rule, a mechanism is one file; nothing else names it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable

from forensics.analyzer.evidence import inconclusive
from forensics.analyzer.hints import Advice, render

ROLES = ("ascent", "descent", "aftermath")
# the colours `st.badge` accepts
BADGE_COLOURS = ("red", "orange", "yellow", "blue", "green", "violet", "gray", "primary")
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
# the precedence note shared by the rules that explain an ascent by a curvature stability limit
CURVATURE_LIMIT = "a stability limit of the curvature was crossed; these rules compete with each other"


@dataclass(frozen=True)
class Threshold:
    """One number a rule compares against, and where it comes from.

    `value`: the number, or the formula when it depends on the run (e.g. "2+2β").
    `source`: the paper (title, authors, year, arXiv id), or "rationale: ..." when the
    number is this project's choice. Raises ValueError when `source` is empty.
    """

    value: float | str
    source: str

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError(f"threshold {self.value!r} has no source (a paper or a rationale)")


class Thresholds(Mapping[str, Threshold]):
    """name -> `Threshold`; an attribute reads the value: `T.min_ratio` is 3.0.

    Built from keywords, each a `Threshold` or a `(value, source)` pair:
    `Thresholds(min_ratio=(3.0, "rationale: ..."))`.
    """

    def __init__(self, **items: Threshold | tuple[float | str, str]):
        built = {}
        for name, item in items.items():
            try:
                built[name] = item if isinstance(item, Threshold) else Threshold(*item)
            except ValueError as exc:
                raise ValueError(f"threshold {name!r}: {exc}") from None
        object.__setattr__(self, "_items", built)

    def __getitem__(self, name: str) -> Threshold:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getattr__(self, name: str) -> Any:
        items = self.__dict__.get("_items", {})
        if name in items:
            return items[name].value
        raise AttributeError(f"no threshold {name!r} (declared: {', '.join(items) or 'none'})")

    def __repr__(self) -> str:
        return f"Thresholds({', '.join(f'{k}={v.value!r}' for k, v in self._items.items())})"


@dataclass(frozen=True)
class Mechanism:
    """Everything the project knows about one spike mechanism, declared in its rule file.

    name: the rule's name (the `rule` column of findings.parquet); equal to its file's name.
    role: "ascent" (a cause of the loss going up: it may be a spike's verdict), "descent"
        (how the loss came back down) or "aftermath" (what the spike left behind); only
        ascent rules are verdicts.
    needs: the engines (`forensics/analyzer/measure/<engine>.py`) whose metrics the judge
        and the tie-break read; they alone are visible to them (`Evidence.view`).
    judge: pure function, an `EvidenceView` in, a `Finding` out.
    summary: when it fires, in one sentence (docs/analysis.md).
    hint: the mitigation the literature supports, shown with a fired finding: text, or parts
        (strings and `forensics.analyzer.hints.Advice`) said against the run's hyperparameters,
        so a hint never advises a value the run already uses. `run` writes a tuple's rendering
        on every fired finding; a text hint is written where the judge left the hint empty (a
        judge may write an evidence-specific one, e.g. the lr to restore).
    thresholds: every number the judge compares against, each with its source.
    badge, colour: the app's badge colour (one of BADGE_COLOURS) and chart colour (#rrggbb).
    panel: the charts behind a finding on the spike page (`forensics.analyzer.plots`).
    precedence: ascent rules only; when several fire, the lowest precedence is the verdict
        outright; equal precedence is decided by `tie_break`, then by score.
    precedence_note: why the rule ranks where it does (docs/analysis.md).
    tie_break: optional `view -> True | False | None`, consulted only when the rule fires
        together with others of its precedence: True makes it the verdict, False makes it
        yield to them, None leaves it to the scores. `tie_break_note` says so in words.
    false_alarms: how often it fired on the project's clean runs, as measured (docs);
        empty when not measured yet.
    counterfactuals: the hint as changes `forensics whatif` can replay (docs/whatif.md), e.g.
        ("beta2=0.95", "eps=x1000"); `skip_batch=onset` names the spike's onset step, and
        `jump=before` the hyperparameter the finding's evidence names at its `old` value.

    Raises ValueError naming the spec when a field is missing or malformed (no panel, a
    threshold without a source, a role or badge colour that does not exist, ...).
    """

    name: str
    role: str
    needs: tuple[str, ...]
    judge: Callable[[Any], Any]
    summary: str
    hint: str | tuple
    thresholds: Thresholds
    badge: str
    colour: str
    panel: tuple = ()
    precedence: int | None = None
    precedence_note: str = ""
    tie_break: Callable[[Any], bool | None] | None = None
    tie_break_note: str = ""
    false_alarms: str = ""
    counterfactuals: tuple[str, ...] = ()

    def __post_init__(self):
        problems = [why for broken, why in self._checks() if broken]
        if problems:
            raise ValueError(f"mechanism spec {self.name!r}: " + "; ".join(problems))

    def _checks(self):
        """(broken, why) for every requirement on the fields."""
        yield (not self.name.isidentifier(),
               "name must be a Python identifier (it is the rule file's name)")
        yield self.role not in ROLES, f"role {self.role!r} is not one of {ROLES}"
        yield (not self.needs or not all(isinstance(e, str) for e in self.needs),
               "needs must name at least one engine")
        yield not callable(self.judge), "judge must be callable"
        yield not self.summary.strip(), "summary is empty"
        yield (not (isinstance(self.hint, str) or (isinstance(self.hint, tuple) and all(
            isinstance(p, (str, Advice)) for p in self.hint))),
            "hint must be text or a tuple of strings and Advice")
        yield (not isinstance(self.thresholds, Thresholds),
               "thresholds must be a Thresholds (each with its source)")
        yield self.badge not in BADGE_COLOURS, f"badge {self.badge!r} is not one of {BADGE_COLOURS}"
        yield not _HEX.match(self.colour), f"colour {self.colour!r} is not #rrggbb"
        yield not self.panel, "panel is empty: say what the spike page draws for this rule"
        yield ((self.role == "ascent") != (self.precedence is not None),
               "precedence is required for ascent rules and only for them")
        yield (self.tie_break is not None and not self.tie_break_note.strip(),
               "a tie_break needs its tie_break_note (docs/analysis.md)")

    @property
    def is_verdict(self) -> bool:
        """Whether a fired finding of this rule can be a spike's verdict."""
        return self.role == "ascent"

    def run(self, ev):
        """Judge `ev` through the view of the engines this rule needs (its Finding); a fired
        finding carries the hint said for this run (`advise`).

        A rule left without any evidence because every engine it needs produced nothing and
        one of them failed (`Evidence.failed`) is inconclusive with that failure as its reason,
        whatever it concluded from the empty evidence: it could not look, so it found nothing
        only in appearance (the verdict then reads `not_analyzed`)."""
        finding = self.judge(ev.view(self.needs))
        if finding.fired:
            if isinstance(self.hint, tuple):
                finding.hint = self.advise(getattr(ev.context, "hparams", None) or {})
            elif not finding.hint:
                finding.hint = self.hint
            return finding
        measured = {row[1] for row in ev.rows}
        lost = [e for e in self.needs if e in ev.failed]
        if lost and not measured.intersection(self.needs):
            return inconclusive(self.name, ev.failed[lost[0]])
        return finding

    def advise(self, hparams: dict) -> str:
        """The hint for a run with hyperparameters `hparams` (`forensics.analyzer.hints`)."""
        return render(self.hint, hparams)

    def prevails(self, ev) -> bool | None:
        """The tie-break's call on `ev` (None when the rule declares none)."""
        return None if self.tie_break is None else self.tie_break(ev.view(self.needs))
