"""The mechanisms the analyzer knows, derived from the rule specs (`forensics.analyzer.rules`).

`MECHANISMS` are their names (findings.parquet's `rule` column) in the order the verdict
considers them; `engines_for(names)` the engines those rules need, in the same order.
"""

from __future__ import annotations

from forensics.analyzer.rules import SPECS

MECHANISMS: tuple[str, ...] = tuple(SPECS)

STATUSES: tuple[str, ...] = ("fired", "not_fired", "inconclusive")

UNEXPLAINED = "unexplained"
# evidence a rule needed could not be measured (an engine raised, the model or loss could not be
# rebuilt, the onset was not captured): a failure, never read as "nothing found"
NOT_ANALYZED = "not_analyzed"
# the verdicts that are not mechanisms, with the app's badge and chart colour (as a spec's)
OTHER_VERDICTS: dict[str, tuple[str, str]] = {UNEXPLAINED: ("gray", "#7f7f7f"),
                                              NOT_ANALYZED: ("yellow", "#222222")}


def check_mechanisms(names) -> tuple[str, ...]:
    """Validate user-given mechanism names; raise ValueError naming the unknown ones."""
    names = tuple(names)
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise ValueError(
            f"unknown mechanism(s) {', '.join(unknown)}; choose from {', '.join(MECHANISMS)}"
        )
    return names


def engines_for(names) -> tuple[str, ...]:
    """The engines the rules `names` need (each once), in the order of `MECHANISMS`."""
    wanted = set(names)
    return tuple(dict.fromkeys(e for name, spec in SPECS.items() if name in wanted
                               for e in spec.needs))
