"""What a counterfactual did to the spike: peak ratio over the baseline, whether the spike is
gone (the stated criterion), steps to recover."""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass

# A spike is gone when the replayed curve never rises above GONE_RATIO × the pre-onset baseline
# from the onset on (rationale: the spike events of the sample runs are ×2.8 to ×1900; a rise of
# less than half the baseline is within the ordinary ringing of the window before them).
GONE_RATIO = 1.5


@dataclass(frozen=True)
class Outcome:
    """peak_ratio: max of the curve from the onset on / baseline (inf when non-finite).
    spike_gone: peak_ratio < gone_ratio. recover_steps: steps from the onset until the curve is
    back under gone_ratio × baseline after its peak (0 when gone; None when not in the window)."""

    peak_ratio: float
    spike_gone: bool
    recover_steps: int | None


def baseline(steps: list[int], curve: list[float | None], onset: int) -> float:
    """Median of the curve over the steps before the onset (its value at the first step when the
    window starts at the onset). Raises ValueError when there is no finite value to use."""
    before = [v for t, v in zip(steps, curve, strict=True)
              if t < onset and v is not None and math.isfinite(v)]
    if not before:
        before = [v for v in curve[:1] if v is not None and math.isfinite(v)]
    if not before:
        raise ValueError("no finite loss before the onset in the replayed window: no baseline")
    return statistics.median(before)


def outcome(steps: list[int], curve: list[float | None], onset: int, base: float,
            gone_ratio: float = GONE_RATIO) -> Outcome:
    """The outcome of one curve (one value per step; None where the step was skipped)."""
    after = [(t, v) for t, v in zip(steps, curve, strict=True) if t >= onset and v is not None]
    if not after:
        return Outcome(math.nan, False, None)
    ratios = [(t, v / base if math.isfinite(v) else math.inf) for t, v in after]
    peak_t, peak = max(ratios, key=lambda tv: (not math.isnan(tv[1]), tv[1]))
    if peak < gone_ratio:
        return Outcome(peak, True, 0)
    back = [t for t, r in ratios if t > peak_t and r < gone_ratio]
    return Outcome(peak, False, (back[0] - onset) if back else None)


class DetectorJudge:
    """The run's own detector, fed once with the recorded losses before the window, then copied
    (its state_dict) for each curve to judge: the cost is the window's, not the run's length."""

    def __init__(self, history: tuple[list, list], start: int, onset: int, config):
        from forensics.record.detector import SpikeDetector

        det = SpikeDetector(config)
        for t, v in zip(*history, strict=True):
            if t < start:
                det.update(int(t), None if v is None else float(v))
        self.state = copy.deepcopy(det.state_dict())
        self.config, self.start, self.onset = config, start, onset

    def __call__(self, steps: list[int], curve: list[float | None], base: float) -> Outcome:
        """The outcome of `curve` (a skipped step, None, is not fed: the loop never saw it). The spike
        is gone when the detector flags no spike from the window's first step on; else recover_steps
        = its end − onset (None while still open at the window's end). peak_ratio is against `base`."""
        from forensics.record.detector import SpikeDetector
        from forensics.rundir.spikes import Spike

        det = SpikeDetector(self.config)
        det.load_state_dict(copy.deepcopy(self.state))
        events = []
        for t, v in zip(steps, curve, strict=True):
            if v is not None:
                events += [e for e in det.update(int(t), v) if e["type"] == "spike"]
        events += det.finish()
        flagged = [s for s in map(Spike.from_event, events) if s.onset >= self.start]
        peak = outcome(steps, curve, self.onset, base, math.inf).peak_ratio
        if not flagged:
            return Outcome(peak, True, 0)
        end = flagged[0].end
        return Outcome(peak, False, None if end is None else end - self.onset)
