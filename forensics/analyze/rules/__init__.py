"""One rule per mechanism: each reads an `Evidence` and returns one `Finding`.

Rules are pure: they see only the measurements (and the spike's context), so a finding
can be re-derived from `analysis/measurements.parquet`.
"""

from forensics.analyze.rules import (
    adam_beta2_lag,
    catapult,
    condensation,
    data,
    low_frequency,
    numerical,
    sharpness,
)

RULES = {
    "numerical": numerical.judge,
    "sharpness": sharpness.judge,
    "catapult": catapult.judge,
    "adam_beta2_lag": adam_beta2_lag.judge,
    "low_frequency": low_frequency.judge,
    "condensation": condensation.judge,
    "data": data.judge,
}

__all__ = ["RULES"]
