"""Engine `logits`: the output logits and log Z = logsumexp over the vocabulary, per step.

Two sources: the recorded per-step columns of `steps/` (`logit_max`, `log_z_mean`, written when
the recorder is given the logits; `forensics.record.logit_scalars`), at every step from
`LOOKBACK` before onset, and at each finite selected snapshot one forward pass of the replayed
model on (up to `LOGIT_TOKENS` tokens of) the batch, over the tokens the loss counts (targets
−100 are padding). Output-logit divergence (Wortsman et al. 2023, arXiv 2309.14322; PaLM's z-loss,
Chowdhery et al. 2022, arXiv 2204.02311) is read from these series. Applies to class logits:
outputs (..., V) with integer targets (...).
"""

from __future__ import annotations

import torch

from forensics.analyzer.evidence import Evidence
from forensics.analyzer.measure import Skip
from forensics.analyzer.measure._steps import column, spike_range
from forensics.math.attention import output_logit_stats

WITHOUT_SNAPSHOTS = True  # the recorded columns alone already show the trend
LOGIT_TOKENS = 4096

FORWARD_ONLY = True  # forward passes without gradients: the default attention kernel
METRICS = {
    "logit_max": ("logit", "the largest output logit over the batch's counted tokens (replayed)"),
    "logit_mean": ("logit", "the mean output logit over counted tokens and vocabulary (replayed)"),
    "log_z_mean": ("nats", "mean log Z = logsumexp_v logit over the counted tokens (replayed); 0 "
                   "when the logits are log-probabilities"),
    "log_z_max": ("nats", "the largest log Z of any counted token (replayed)"),
    "log_z_min": ("nats", "the smallest log Z of any counted token (replayed)"),
    "logit_tokens": ("count", "tokens counted (targets ≠ −100)"),
    "logit_max_recorded": ("logit", "steps/ logit_max: the largest output logit the loss saw, "
                           "every recorded step"),
    "log_z_recorded": ("nats", "steps/ log_z_mean: mean log Z of the loss's logits, every recorded step"),
}


def _recorded(ev: Evidence, run) -> None:
    lo, hi = spike_range(ev.context)
    for name, metric in (("logit_max", "logit_max_recorded"), ("log_z_mean", "log_z_recorded")):
        steps, values = column(run, name, lo, hi)
        for s, v in zip(steps, values, strict=True):
            if v == v:  # not NaN
                ev.add(int(s), "logits", metric, float(v))


def measure(ev: Evidence, scene) -> None:
    """Recorded per-step logit columns, then the replayed logits at each finite selected step."""
    _recorded(ev, scene.run)
    if scene.replay is None and not scene.window.steps:
        return
    replay = scene.require_replay()

    def at(step):
        batch = scene.batch(step, max_tokens=LOGIT_TOKENS)
        y = batch[replay.target_key]
        with torch.no_grad():
            out = replay.outputs(scene.params(step), batch[replay.input_key])
        if (not isinstance(out, torch.Tensor) or y.is_floating_point() or out.dim() < 2
                or out.shape[:-1].numel() != y.numel()):
            raise Skip("the outputs are not class logits (..., V) with integer targets (...)")
        stats = output_logit_stats(out, y)
        tokens = stats.pop("tokens")
        stats.pop("log_z_sq_mean")
        return {**stats, "logit_tokens": float(tokens)} if tokens else {}

    scene.each(ev, "logits", scene.finite_steps(), at)
