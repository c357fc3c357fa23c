"""The tables of docs/analysis.md, generated from the engines' METRICS and the rules' SPECs.

Each table sits between `<!-- begin generated: NAME -->` and `<!-- end generated: NAME -->`
in the document; `python -m forensics.analyzer.doc_tables docs/analysis.md` rewrites them
and a test fails when the file and the specs disagree, so the docs cannot drift.
"""

from __future__ import annotations

import re
import sys
from itertools import groupby
from pathlib import Path

from forensics.analyzer.measure import METRICS
from forensics.analyzer.mechanisms import NOT_ANALYZED, UNEXPLAINED
from forensics.analyzer.rules import SPECS

_BLOCK = re.compile(r"(<!-- begin generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)"
                    r"(<!-- end generated: (?P=name) -->)", re.DOTALL)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def metrics_table() -> str:
    """engine | metric | unit | meaning, one row per declared metric, engines in run order."""
    from forensics.analyzer.mechanisms import MECHANISMS, engines_for

    order = list(engines_for(MECHANISMS)) + [e for e in METRICS if e not in engines_for(MECHANISMS)]
    lines = ["| engine | metric | unit | meaning |", "|---|---|---|---|"]
    for engine in order:
        for i, (metric, (unit, meaning)) in enumerate(METRICS[engine].items()):
            lines.append(f"| {engine if i == 0 else ''} | `{metric}` | {_cell(unit)} | {_cell(meaning)} |")
    return "\n".join(lines) + "\n"


def rules_table() -> str:
    """rule | role | engines it reads | fires when | false alarms, in verdict order."""
    lines = ["| rule | role | reads (engines) | fires when | false alarms on clean runs |",
             "|---|---|---|---|---|"]
    for spec in SPECS.values():
        reads = ", ".join(f"`{e}`" for e in spec.needs)
        alarms = _cell(spec.false_alarms) if spec.false_alarms else "not measured yet"
        lines.append(f"| `{spec.name}` | {spec.role} | {reads} | {_cell(spec.summary)} | {alarms} |")
    return "\n".join(lines) + "\n"


def thresholds_table() -> str:
    """rule | threshold | value | source: every number a rule compares against."""
    lines = ["| rule | threshold | value | source |", "|---|---|---|---|"]
    for spec in SPECS.values():
        if not spec.thresholds:
            lines.append(f"| `{spec.name}` | — | — | — |")
        for i, (name, t) in enumerate(spec.thresholds.items()):
            value = f"{t.value:g}" if isinstance(t.value, (int, float)) else t.value
            lines.append(f"| {f'`{spec.name}`' if i == 0 else ''} | `{name}` | {_cell(value)} | "
                         f"{_cell(t.source)} |")
    return "\n".join(lines) + "\n"


def verdict_list() -> str:
    """The verdict's precedence, as the specs declare it."""
    ascent = [s for s in SPECS.values() if s.is_verdict]
    lines = []
    for i, (prec, group) in enumerate(groupby(ascent, key=lambda s: s.precedence), start=1):
        group = list(group)
        names = ", ".join(f"`{s.name}`" for s in group)
        notes = "; ".join(dict.fromkeys(s.precedence_note for s in group if s.precedence_note))
        head = f"{i}. {names} (precedence {prec})" + (f": {notes}" if notes else "")
        if len(group) > 1:
            head += ". Among them, when several fire: "
            ties = [f"`{s.name}` {s.tie_break_note}" for s in group if s.tie_break is not None]
            head += "; ".join(ties + ["otherwise the highest score (then the name)"])
        lines.append(head + ".")
    lines.append(f"{len(lines) + 1}. `{NOT_ANALYZED}` when an ascent rule that could have outranked "
                 "the answer (or any, when none fired) could not be judged because an engine it "
                 "needs failed (it raised, the model or the loss could not be rebuilt, the onset "
                 "was not captured): the verdict message is that reason, the score 0, and "
                 "`forensics analyze` / `report` exit with 4.")
    lines.append(f"{len(lines) + 1}. `{UNEXPLAINED}` when no ascent rule fired and every one "
                 "could be judged.")
    others = [f"`{s.name}` ({s.role})" for s in SPECS.values() if not s.is_verdict]
    if others:
        lines.append("")
        lines.append(f"Never a verdict: {', '.join(others)}; they describe what came after the ascent.")
    return "\n".join(lines) + "\n"


SECTIONS = {"metrics": metrics_table, "rules": rules_table, "thresholds": thresholds_table,
            "verdict": verdict_list}


def render(text: str) -> str:
    """`text` with every generated block replaced by its current content.

    Raises ValueError naming a block that has no generator, or a generator with no block.
    """
    seen = set()

    def fill(match: re.Match) -> str:
        name = match.group("name")
        if name not in SECTIONS:
            raise ValueError(f"no generator for the block {name!r}; known: {', '.join(SECTIONS)}")
        seen.add(name)
        return match.group(1) + SECTIONS[name]() + match.group(4)

    out = _BLOCK.sub(fill, text)
    missing = set(SECTIONS) - seen
    if missing:
        raise ValueError(f"no generated block for {', '.join(sorted(missing))} in the document")
    return out


def main(argv: list[str]) -> int:
    """Rewrite the generated blocks of each file named in `argv`; print the ones that changed."""
    for name in argv:
        path = Path(name)
        old = path.read_text(encoding="utf-8")
        new = render(old)
        if new != old:
            path.write_text(new, encoding="utf-8")
            print(f"{path}: tables regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
