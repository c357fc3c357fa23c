"""`DetectorConfig`: the online detector's settings (JSON-able; stored in run.json["detector"])."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

SIGNALS = ("auto", "loss", "probe", "both")
# preset -> defaults of the fields left None (see forensics.record.presets for each rule)
PRESET_DEFAULTS = {
    "robust": dict(window=64, min_history=16, threshold=6.0, min_ratio=1.5, close_ratio=1.2, max_len=100),
    "robust_flat": dict(window=64, min_history=16, threshold=6.0, min_ratio=1.5, close_ratio=1.2,
                        max_len=100),
    "zscore": dict(window=128, min_history=32, threshold=6.0, min_ratio=1.0, close_ratio=1.2, max_len=100),
    "ratio": dict(window=32, min_history=8, threshold=3.0, min_ratio=1.0, close_ratio=1.5, max_len=100),
    "megatron": dict(window=0, min_history=1, threshold=10.0, min_ratio=1.0, close_ratio=2.0, max_len=100),
}


@dataclass
class DetectorConfig:
    """Detector settings. None fields take the preset's value (`PRESET_DEFAULTS`).

    Fields:
        preset: the opening rule over the trailing window (forensics.record.presets).
        signal: the series watched: "loss" (the training loss), "probe" (the loss of a fixed probe
            set: the objective, for minibatch training), "both" (either opens a spike) or "auto"
            (default: the probe once it has a value, the training loss until then and without a
            probe). A NaN/Inf training loss opens a spike whatever the signal.
        window: trailing non-spike values the rule looks at.
        min_history: values needed before the preset's rule applies; before that the warm-up rule.
        threshold: the preset's score threshold (z, ratio, ...).
        min_ratio: the loss must also exceed min_ratio x the baseline to open a spike.
        close_ratio: a spike's peak is over at the first value below close_ratio x its baseline
            (or, for robust/robust_flat/zscore, within `close_z` spreads of the frozen window).
        max_len: a sub-peak still not back to normal after max_len steps is closed anyway.
        close_z: see close_ratio.
        mad_floor: floor on the robust spread (1.4826 MAD of log L): a smooth loss is not
            "infinitely quiet".
        warmup_ratio: before `min_history` values exist, the running-minimum rule of
            forensics.record.warmup: a noisy series opens a spike above warmup_ratio x its median
            (x the square of its own largest step-to-step change, if larger) for 3 values in a
            row; a smooth one above min(2, warmup_ratio) x its lowest value (a doubling, the
            truth's definition of a spike in bench/detection.py); 0 turns the rule off. The
            trade-off: a smooth loss that legitimately doubles above its lowest early value is
            flagged, and a noisy loss's early spike must tower over its scatter.
        merge_gap: an episode stays open this many steps after its recovery; a re-trigger inside
            it is a sub-peak of the same episode (ringing, echoes), not a new spike. 0: no merging.
        batch_ratio: signal="auto" with a probe: the training loss still opens a spike when its rule
            fires and it is above batch_ratio x the highest training loss of its window (a bad
            batch); ordinary minibatch noise, however heavy-tailed, stays below that. 0: never.
        objective_ratio, objective_window: signal="auto" watches the probe (the objective) with
            the rule of forensics.record.presets.RecentMin: a spike opens above objective_ratio x the
            lowest of its last objective_window values, whatever the preset, and its sub-peak ends
            below 0.8 x that level. While the probe set is drawn, the first batch is the probe and
            the reference is the run's first training loss (forensics.record.detector). 2.5 on a probe of 256
            samples matched 2x rises of the full loss in bench/detection.py (a subset's dips are
            deeper than the full loss's, so its ratios run ~1.2x higher).
    """

    preset: str = "robust"
    signal: str = "auto"
    window: int | None = None
    min_history: int | None = None
    threshold: float | None = None
    min_ratio: float | None = None
    close_ratio: float | None = None
    max_len: int | None = None
    close_z: float = 3.0
    mad_floor: float = 0.01
    warmup_ratio: float = 3.0
    merge_gap: int = 10
    batch_ratio: float = 2.0
    objective_ratio: float = 2.5
    objective_window: int = 20

    def __post_init__(self):
        if self.preset not in PRESET_DEFAULTS:
            raise ValueError(f"unknown detector preset {self.preset!r}; "
                             f"choose from {', '.join(PRESET_DEFAULTS)}")
        if self.signal not in SIGNALS:
            raise ValueError(f"detector signal must be one of {SIGNALS}, got {self.signal!r}")
        for k, v in PRESET_DEFAULTS[self.preset].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if self.window < 0 or self.min_history < 1 or self.max_len < 1 or self.merge_gap < 0:
            raise ValueError(f"detector window/min_history/max_len/merge_gap out of range: {self}")
        if self.objective_ratio <= 1 or self.objective_window < 1:
            raise ValueError(f"detector objective_ratio must be > 1 and objective_window >= 1: {self}")
        if self.batch_ratio < 0:
            raise ValueError(f"detector batch_ratio must be >= 0, got {self.batch_ratio}")
        if not (self.warmup_ratio == 0 or self.warmup_ratio > 1):
            raise ValueError(f"detector warmup_ratio must be 0 (off) or > 1, got {self.warmup_ratio}")
        if self.preset != "megatron" and self.window < self.min_history:
            raise ValueError(f"detector window ({self.window}) must be >= min_history ({self.min_history})")

    def to_dict(self) -> dict:
        """The settings as a JSON object (every field)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DetectorConfig:
        """From `to_dict`'s output; unknown keys (a newer writer's) are ignored. Runs recorded before
        the warm-up rule and episodes keep their behaviour (warmup_ratio 0, merge_gap 0)."""
        names = {f.name for f in fields(cls)}
        old = {"warmup_ratio": 0.0, "merge_gap": 0, "signal": "loss"} if d and "merge_gap" not in d else {}
        return cls(**{**old, **{k: v for k, v in d.items() if k in names}})

    @classmethod
    def coerce(cls, spec) -> DetectorConfig:
        """Accept a preset name, a dict or a DetectorConfig; ValueError otherwise."""
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, str):
            return cls(preset=spec)
        if isinstance(spec, dict):
            names = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in spec.items() if k in names})
        raise ValueError(f"detector must be a preset name, dict or DetectorConfig, got {spec!r}")


__all__ = ["PRESET_DEFAULTS", "SIGNALS", "DetectorConfig"]
