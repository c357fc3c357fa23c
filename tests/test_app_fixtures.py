"""Tiny run folders for the app tests, written with the project's own writers (no training).

`make_folder(root)` writes three runs: `adam_run` (analyzed, two spikes, every engine's
metrics, real snapshots of a first layer so the condensation heatmaps have weights to read),
`control` (analyzed, no spike) and `live` (never analyzed, one online spike, steps still growing).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from forensics.analyzer.store import write_analysis
from forensics.rundir.events import EventLog
from forensics.rundir.manifest import build_manifest, write_manifest
from forensics.rundir.snapshots import save_snapshot
from forensics.rundir.steps import write_chunk

DETECTOR = {"preset": "robust", "signal": "loss", "window": 64, "min_history": 16, "threshold": 6.0,
            "min_ratio": 1.5, "close_ratio": 1.2, "max_len": 100}
SPIKES = {"adam_run": [(100, 104, 110), (200, 203, 208)], "control": [], "live": [(60, 62, 66)]}
VERDICTS = ["adam_beta2_lag", "sharpness"]


def _loss(num_steps: int, spikes) -> tuple[list, list]:
    loss = [1.0 / (1 + 0.02 * t) for t in range(num_steps)]
    spike_of = [None] * num_steps
    for k, (onset, peak, end) in enumerate(spikes):
        for t in range(onset, end):
            loss[t] *= 1 + 9 * math.exp(-abs(t - peak) / 2)
            spike_of[t] = k
    return loss, spike_of


def write_steps(path: Path, index: int, steps: range, loss, spike_of, lr: float) -> None:
    write_chunk(path, index, {
        "step": list(steps), "wall_time": [0.01 * t for t in steps], "loss": [loss[t] for t in steps],
        "lr": [lr] * len(steps), "grad_norm": [1.0 + 0.01 * t for t in steps],
        "param_norm": [2.0] * len(steps), "update_norm": [0.01] * len(steps),
        "optimizer_step": list(steps), "adam_ratio_median": [0.5 / (1 + t) for t in steps],
        "spike_id": [spike_of[t] for t in steps]})


def make_run(root: Path, name: str, *, num_steps: int = 300, analyzed: bool = True,
             chunk: int = 128) -> Path:
    path = Path(root) / name
    path.mkdir(parents=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 12), torch.nn.Tanh(), torch.nn.Linear(12, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.999))
    write_manifest(path, build_manifest(
        model, opt, run_id=name, model_factory=None, model_kwargs={}, loss="mse",
        batch_keys={"input": "x", "target": "y"}, detector=DETECTOR, recorder={"ring_size": 8},
        task={}, seed=0))
    spikes = SPIKES[name]
    loss, spike_of = _loss(num_steps, spikes)
    for i, start in enumerate(range(0, num_steps, chunk)):
        write_steps(path, i, range(start, min(start + chunk, num_steps)), loss, spike_of, 0.01)

    log = EventLog(path, fsync=False)
    w = model[0].weight.detach().clone()
    for k, (onset, peak, end) in enumerate(spikes):
        log.append("spike_open", spike_id=k, step=onset, loss=loss[onset], baseline=loss[onset - 1],
                   score=9.0, signal="loss")
        for step, role in ((onset - 2, "pre"), (onset, "onset"), (peak, "during"), (end, "post")):
            # after the spike the first layer has condensed: every neuron along one direction
            weight = w if step < onset else w[:1].repeat(12, 1) * torch.linspace(-1, 1, 12)[:, None]
            rel = f"snapshots/step-{step:08d}.safetensors"
            bias = model[0].bias.detach().clone() * (step < onset)
            size = save_snapshot(path / rel, {"param/0.weight": weight.contiguous(), "param/0.bias": bias},
                                 {"format_version": 1, "run_id": name, "step": step, "role": role,
                                  "spike_id": k})
            log.append("snapshot", step=step, role=role, spike_id=k, file=rel, bytes=size)
        log.append("spike", spike_id=k, onset=onset, peak=peak, end=end, peak_loss=loss[peak],
                   baseline=loss[onset - 1], magnitude=loss[peak] / loss[onset - 1], signal="loss",
                   nonfinite=False)
    log.append("close", step=num_steps - 1, wall_time=0.01 * num_steps)
    if analyzed:
        write_analysis(path, _analysis(name, spikes, loss), {"created": "2026-01-01T00:00:00Z"})
    return path


def _analysis(run_id: str, spikes, loss) -> dict:
    rows = {"spikes": [], "measurements": [], "findings": []}
    for k, (onset, peak, end) in enumerate(spikes):
        verdict = VERDICTS[k]
        rows["spikes"].append({
            "run_id": run_id, "spike_id": k, "onset_step": onset, "peak_step": peak, "end_step": end,
            "peak_loss": loss[peak], "baseline_loss": loss[onset - 1],
            "magnitude": loss[peak] / loss[onset - 1], "source": "online", "verdict": verdict,
            "verdict_score": 0.9, "verdict_message": f"VERDICT-{k}: {verdict} explains the ascent"})
        add = lambda step, engine, metric, value: rows["measurements"].append(  # noqa: E731
            {"run_id": run_id, "spike_id": k, "step": step, "engine": engine, "metric": metric,
             "value": float(value)})
        for step in (onset - 2, onset, peak, end):
            up = step >= onset
            add(step, "curvature", "eta_lambda_max", 1.5 + up)
            add(step, "curvature", "eta_grad_curvature", 1.2 + up)
            add(step, "curvature", "limit_gd", 2.0)
            add(step, "curvature", "limit_momentum", 2.0)
            add(step, "adam", "eta_pre_lambda_max", 30.0 + 10 * up + k)
            add(step, "adam", "eta_pre_grad_curvature", 25.0 + 10 * up)
            add(step, "adam", "limit_beta1_zero", 2.0)
            add(step, "adam", "limit_cohen", 38.0)
            add(step, "adam", "ratio_median", 0.01 + 0.5 * up)
            add(step, "adam", "v_sum", 1e-3 * 0.999 ** step)
            add(step, "ntk", "pl_top", 0.1 + up)
            add(step, "ntk", "pl_rest", 0.05)
            add(step, "ntk", "lr_over_eta_crit", 0.8 + 0.5 * up)
            add(step, "condensation", "condensation_index", 0.2 + 0.7 * (step > peak))
            add(step, "condensation", "condensation_share", 0.01 + 0.9 * (step > peak))
            for kind in ("loss", "grad", "param", "state"):
                add(step, "numerical", f"nonfinite_{kind}", 0)
        for step in range(onset - 2, end + 1):
            add(step, "frequency", "e_low", 0.01 * (1 + 5 * (onset <= step <= peak + 3)))
            add(step, "frequency", "e_high", 0.002)
        add(peak, "frequency", "recovery_low", 4)
        add(peak, "frequency", "recovery_high", 1)
        add(onset, "data", "batch_loss", 0.5)
        add(onset, "data", "neighbor_loss_median", 0.45)
        add(onset, "data", "neighbor_count", 8)
        for rule in ("numerical", "sharpness", "catapult", "adam_beta2_lag", "low_frequency",
                     "condensation", "data"):
            fired = rule in (verdict, "condensation")
            status = "fired" if fired else ("inconclusive" if rule == "catapult" else "not_fired")
            rows["findings"].append({
                "run_id": run_id, "spike_id": k, "rule": rule, "status": status,
                "score": 0.9 if fired else 0.0, "message": f"MSG {rule} {status} spike {k}",
                "hint": f"HINT {rule}", "reason": "no NTK for Adam" if status == "inconclusive" else "",
                "evidence": json.dumps({"at_step": onset}), "thresholds": json.dumps({"limit": 2.0}),
                "primary": rule == verdict})
    return rows


def make_folder(root: Path) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    make_run(root, "adam_run")
    make_run(root, "control")
    make_run(root, "live", num_steps=100, analyzed=False, chunk=64)
    return root
