"""Shared by the sample-run tests: where the shipped runs are, a skip marker when they are not
recorded, analysing a copy (the shipped folder stays as it is), one rule's finding of a spike."""

import shutil
from pathlib import Path

import pytest

from forensics.analyzer.pipeline import analyze

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"


def recorded(names) -> pytest.MarkDecorator:
    """Skip unless every named sample run is recorded."""
    return pytest.mark.skipif(not all((SAMPLES / n / "run.json").is_file() for n in names),
                              reason="sample_runs/ not recorded (python -m forensics.demo)")


def analyze_copy(name: str, tmp_path: Path):
    """`analyze` (not written) of a copy of sample run `name` without its analysis/."""
    dst = tmp_path / name
    shutil.copytree(SAMPLES / name, dst, ignore=shutil.ignore_patterns("analysis"))
    return analyze(dst, write=False)


def finding(spike, rule: str):
    """The spike's finding of `rule`."""
    return next(f for f in spike.findings if f.rule == rule)
