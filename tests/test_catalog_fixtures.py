"""Small run directories for the catalog and CLI tests, written with the project's own writers.

`make_run` writes run.json (rundir.manifest), steps chunks (rundir.steps), events
(rundir.events) and, when `analyzed`, analysis/ (analyze.store) — the same files the
recorder and the analyzer write, without training anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from forensics.analyzer.store import write_analysis
from forensics.rundir.events import EventLog
from forensics.rundir.manifest import build_manifest, write_manifest
from forensics.rundir.steps import write_chunk

DETECTOR = {"preset": "robust", "signal": "loss", "window": 64, "min_history": 16, "threshold": 6.0,
            "min_ratio": 1.5, "close_ratio": 1.2, "max_len": 100}


def make_run(root: Path, name: str, *, optimizer: str = "adam", lr: float = 0.01,
             num_steps: int = 300, spikes=((100, 104, 120),), analyzed: bool = True,
             verdicts=None, chunk: int = 128) -> Path:
    """A run `root/name` with loss spikes at (onset, peak, end); returns its path."""
    path = Path(root) / name
    path.mkdir(parents=True)
    model = torch.nn.Linear(2, 1)
    opt = (torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999)) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0))
    manifest = build_manifest(model, opt, run_id=name, model_factory="forensics.zoo.models:mlp",
                              model_kwargs={"width": 8}, loss="mse",
                              batch_keys={"input": "x", "target": "y"}, detector=DETECTOR,
                              recorder={"ring_size": 8}, task={}, seed=0)
    write_manifest(path, manifest)

    loss = [1.0 / (1 + 0.01 * t) for t in range(num_steps)]
    spike_of = [None] * num_steps
    for k, (onset, peak, end) in enumerate(spikes):
        for t in range(onset, end):
            loss[t] *= 1 + 9 * math.exp(-abs(t - peak) / 3)
            spike_of[t] = k
    for i, start in enumerate(range(0, num_steps, chunk)):
        ts = range(start, min(start + chunk, num_steps))
        write_chunk(path, i, {"step": list(ts), "wall_time": [0.01 * t for t in ts],
                              "loss": [loss[t] for t in ts], "lr": [lr] * len(ts),
                              "grad_norm": [1.0] * len(ts), "param_norm": [2.0] * len(ts),
                              "optimizer_step": list(ts), "spike_id": [spike_of[t] for t in ts],
                              "adam_ratio_median": [0.05 if optimizer == "adam" else None] * len(ts)})

    log = EventLog(path, fsync=False)
    for k, (onset, peak, end) in enumerate(spikes):
        base = loss[onset - 1]
        log.append("spike_open", spike_id=k, step=onset, loss=loss[onset], baseline=base,
                   score=9.0, signal="loss")
        for step, role in ((onset - 1, "pre"), (onset, "onset"), (peak, "during")):
            log.append("snapshot", step=step, role=role, spike_id=k,
                       file=f"snapshots/step-{step:08d}.safetensors", bytes=1000)
        log.append("spike", spike_id=k, onset=onset, peak=peak, end=end, peak_loss=loss[peak],
                   baseline=base, magnitude=loss[peak] / base, signal="loss", nonfinite=False)
    log.append("snapshot", step=0, role="baseline", spike_id=None,
               file="snapshots/step-00000000.safetensors", bytes=1000)
    log.append("warning", step=num_steps // 2, message="snapshot budget exhausted: capture stopped")
    log.append("close", step=num_steps - 1, wall_time=0.01 * num_steps)

    if analyzed:
        write_analysis(path, _analysis(name, spikes, loss, lr, verdicts), {"created": "2026-01-01T00:00:00Z"})
    return path


def _analysis(run_id, spikes, loss, lr, verdicts):
    rows = {"spikes": [], "measurements": [], "findings": []}
    for k, (onset, peak, end) in enumerate(spikes):
        verdict = (verdicts or ["adam_beta2_lag"] * len(spikes))[k]
        rows["spikes"].append({
            "run_id": run_id, "spike_id": k, "onset_step": onset, "peak_step": peak,
            "end_step": end, "peak_loss": loss[peak], "baseline_loss": loss[onset - 1],
            "magnitude": loss[peak] / loss[onset - 1], "source": "online", "verdict": verdict,
            "verdict_score": 0.0 if verdict == "unexplained" else 0.8,
            "verdict_message": f"{verdict} explains it"})
        for step in (onset - 4, onset - 1, onset, peak):
            lam = 150.0 + 30.0 * (step >= onset)  # η·λ_max = lr·lam: past 2 at onset when lr = 0.012
            for engine, metric, value in (("curvature", "lambda_max", lam),
                                          ("curvature", "eta_lambda_max", lr * lam),
                                          ("adam", "eta_pre_lambda_max", 2.5),
                                          ("adam", "ratio_median", 0.05)):
                rows["measurements"].append({"run_id": run_id, "spike_id": k, "step": step,
                                             "engine": engine, "metric": metric, "value": value})
        for rule in ("sharpness", "adam_beta2_lag", "catapult"):
            status = "fired" if rule == verdict else ("inconclusive" if rule == "catapult" else "not_fired")
            rows["findings"].append({
                "run_id": run_id, "spike_id": k, "rule": rule, "status": status,
                "score": 0.8 if status == "fired" else 0.1,
                "message": f"{rule} {status} at step {onset}",
                "hint": HINTS[rule] if status == "fired" else "",
                "reason": "no NTK measurements" if status == "inconclusive" else "",
                "evidence": json.dumps({"at_step": onset, "eta_pre_lambda_max": 2.5,
                                        "eta_lambda_max": lr * 180.0}),
                "thresholds": json.dumps({"limit_seed": 2.0, "limit_gd": 2.0}),
                "primary": rule == verdict})
    return rows


HINTS = {"sharpness": "lower the peak learning rate or add warmup",
         "adam_beta2_lag": "lower β₂ (e.g. 0.95) or raise ε", "catapult": "warmup"}


def make_catalog_runs(root: Path) -> Path:
    """The three runs the docs/sql.md examples and the CLI tests use; returns `root`.

    adam-a: Adam, 2 spikes, analyzed, both adam_beta2_lag. sgd-b: SGD at lr 0.012, 2 spikes,
    analyzed: sharpness (η·λ_max = 2.16 at onset) and unexplained. sgd-c: never analyzed.
    """
    make_run(root, "adam-a", optimizer="adam", lr=0.001, spikes=((100, 104, 120), (200, 202, 215)),
             verdicts=["adam_beta2_lag", "adam_beta2_lag"])
    make_run(root, "sgd-b", optimizer="sgd", lr=0.012, spikes=((60, 63, 80), (150, 151, 170)),
             verdicts=["sharpness", "unexplained"])
    make_run(root, "sgd-c", optimizer="sgd", lr=0.05, spikes=((120, 121, 140),), analyzed=False)
    return Path(root)
