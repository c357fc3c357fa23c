"""The mechanisms the analyzer knows: one rule each, named as in findings.parquet's `rule` column."""

MECHANISMS: tuple[str, ...] = (
    "numerical",       # non-finite loss, gradients or moments
    "sharpness",       # edge of stability / lower-loss-as-sharper (Cohen et al. 2021; Li, Xu, Zhang)
    "catapult",        # NTK top eigendirection catapult (Lewkowycz et al. 2020; Zhu et al.)
    "adam_beta2_lag",  # Adam's second moment lags the gradient (the beta2-lag seed)
    "low_frequency",   # the rapid descent is low-frequency (F-principle; Li, Xu, Zhang)
    "condensation",    # first-layer neurons align after the spike (Li, Xu, Zhang)
    "data",            # the batch alone explains the jump
)

STATUSES: tuple[str, ...] = ("fired", "not_fired", "inconclusive")

UNEXPLAINED = "unexplained"


def check_mechanisms(names) -> tuple[str, ...]:
    """Validate user-given mechanism names; raise ValueError naming the unknown ones."""
    names = tuple(names)
    unknown = [n for n in names if n not in MECHANISMS]
    if unknown:
        raise ValueError(
            f"unknown mechanism(s) {', '.join(unknown)}; choose from {', '.join(MECHANISMS)}"
        )
    return names
