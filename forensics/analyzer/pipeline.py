"""`analyze(run)`: replay every spike of a run, measure it, judge it, and write the findings.

The pipeline is the only place that loads snapshots and writes results; the engines
(`forensics.analyzer.measure`) turn tensors into measurements, the rules
(`forensics.analyzer.rules`, one spec each) turn measurements into findings; which engines
run follows from the specs' `needs`. A failure in one engine or one spike becomes an
`inconclusive` finding with the reason, and the spike's verdict `not_analyzed` when no rule
can answer without that engine (`forensics.analyzer.verdict`); it never loses findings made.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import forensics
from forensics.analyzer.baselines import ENGINE as BASELINE_ENGINE, RUN_LEVEL, measure_baselines
from forensics.analyzer.evidence import Evidence, Finding, SpikeContext, inconclusive
from forensics.analyzer.hints import run_settings
from forensics.analyzer.measure import ENGINES, METRICS, Failed, Scene, Skip, attention_kernel
from forensics.analyzer.mechanisms import MECHANISMS, check_mechanisms, engines_for
from forensics.analyzer.replay import Replay, pick_device
from forensics.analyzer.rules import SPECS
from forensics.analyzer.store import write_analysis
from forensics.analyzer.verdict import choose_verdict
from forensics.analyzer.window import select
from forensics.math.hvp import twice_differentiable_attention as _twice_differentiable_attention
from forensics.record.detector import DetectorConfig
from forensics.record.offline import detect_offline, probe_sets
from forensics.rundir.reader import Run, open_run

Progress = Callable[[int, str, int, int], None]


@dataclass(frozen=True)
class Settings:
    """Analyzer settings; all recorded in analysis/meta.json.

    `lanczos_tol`, `pre_lanczos_tol`: relative Ritz-residual tolerances of λ_max(H), λ_max(P⁻¹H).
    `max_samples`: batch rows used for curvature/NTK (a seeded subsample when larger).
    `max_snapshots`: snapshots measured per spike (see `window.select`); `hessian_snapshots`
    of them for the Hessian engines (`measure._hessian.hessian_steps`; 0: all);
    `adam_plain_lambda_max`: also the plain λ_max(H) on Adam runs, which no rule reads (`curvature`)."""

    max_snapshots: int = 12
    hessian_snapshots: int = 4
    lanczos_tol: float = 1e-3
    pre_lanczos_tol: float = 1e-2
    adam_plain_lambda_max: bool = False
    top_k: int = 1
    max_samples: int = 1024
    ntk_max_n: int = 512
    ntk_top_s: int = 5
    seed: int = 0
    dtype: str = "float32"


@dataclass
class SpikeResult:
    """One analysed spike: its row, its evidence, its findings."""

    context: SpikeContext
    source: str
    verdict: str
    verdict_score: float
    verdict_message: str
    evidence: Evidence
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Analysis:
    """The result of `analyze`: one `SpikeResult` per spike, and where it was written."""

    run_id: str
    spikes: list[SpikeResult]
    settings: Settings
    device: str
    notes: list[str] = field(default_factory=list)
    path: Path | None = None
    baselines: list[tuple[int, str, float]] = field(default_factory=list)  # run level (baselines.py)


def analyze(run: Run | str | Path, *, model: torch.nn.Module | None = None, device=None,
            mechanisms=None, allow_import: bool = False, redetect: bool = False,
            settings: Settings | None = None, progress: Progress | None = None,
            write: bool = True, loss_fn: Callable | None = None) -> Analysis:
    """Analyze every spike of `run` and (by default) write `analysis/` into it.

    `model`: a module to use instead of rebuilding from run.json (no import then).
    `loss_fn`: the live loss `(outputs, targets) -> scalar` to use instead of the one named in
    run.json (which is then not imported: a loss defined in a script, `__main__:fn`, works).
    `allow_import`: permit importing the model factory / loss named in run.json (code that
    is not part of this package); without it only `forensics.zoo` factories are rebuilt.
    `redetect`: re-run the detector offline on `steps/` even when online spikes exist.

    Example:
        >>> from forensics import analyze
        >>> result = analyze("sample_runs/eos")          # doctest: +SKIP
        >>> [s.verdict for s in result.spikes]           # doctest: +SKIP
        ['sharpness']
    """
    settings = settings or Settings()
    rules = check_mechanisms(mechanisms) if mechanisms else MECHANISMS
    engines = engines_for(rules)
    if not isinstance(run, Run):
        run = open_run(run)
    dev = pick_device(device)
    notes: list[str] = []
    run_id = str(run.manifest.get("run_id", Path(run.path).name))

    replay, replay_error = None, ""
    try:
        replay = Replay.from_run(run, model=model, device=dev, allow_import=allow_import,
                                 dtype=getattr(torch, settings.dtype), loss_fn=loss_fn)
        notes.extend(replay.notes)
    except Exception as exc:  # a model or loss that cannot be rebuilt: every model engine fails
        replay_error = str(exc) if str(exc).startswith(("model not", "loss not")) \
            else f"model not rebuilt: {type(exc).__name__}: {exc}"
        notes.append(replay_error)

    spikes, source = _spikes(run, redetect)
    results: list[SpikeResult] = []
    for spike in spikes:
        ev = Evidence(_context(run, spike, run_id), catalog=METRICS)
        try:
            scene = _scene(run, ev.context, source, replay, replay_error, settings, dev)
        except Exception as exc:  # LookupError: the onset was not captured
            scene = None
            why = str(exc) if isinstance(exc, LookupError) else \
                f"snapshots unreadable: {type(exc).__name__}: {exc}"
            for e in engines:
                ev.fail(e, why)
        if scene is None:
            _measure_from_steps(ev, run, engines)
        else:
            ev.context = scene.context
            _measure(ev, scene, engines, progress)
        findings = [_judge(SPECS[rule], ev) for rule in rules]
        verdict, score, message = choose_verdict(findings, ev)
        results.append(SpikeResult(ev.context, source, verdict, score, message, ev, findings))

    baselines: list = []  # run-level numbers: a failure is a note, never a verdict
    if replay is not None:
        try:
            with _twice_differentiable_attention():
                baselines = measure_baselines(run, replay, settings)
        except Exception as exc:
            notes.append(f"baseline measurements failed: {type(exc).__name__}: {exc}")
    notes.extend(run.notes)  # files the reader skipped or tolerated, each named
    analysis = Analysis(run_id, results, settings, str(dev), notes, baselines=baselines)
    if write:
        analysis.path = write_analysis(run.path, _tables(analysis), _meta(analysis, rules))
    return analysis


def _spikes(run: Run, redetect: bool):
    """Online spikes from events.jsonl, or the same detector re-run offline on steps/."""
    if run.spikes and not redetect:
        return list(run.spikes), "online"
    if (steps := run.steps) is None or steps.num_rows == 0:
        return [], "offline"
    config = DetectorConfig.from_dict(run.manifest.get("detector") or {})
    s = np.asarray(steps.column("step").to_numpy(zero_copy_only=False))
    v = np.asarray(steps.column("loss").to_numpy(zero_copy_only=False), dtype=float)
    probe, rows = (steps.column(c).to_pylist() if c in steps.column_names else None
                   for c in ("probe_loss", "batch_rows"))
    sets = probe_sets(s, probe, run.events)  # where the auto probe's set switched (the `probe` event)
    return detect_offline(s, v, config, probe=probe, rows=rows, probe_set=sets), "offline"


def _context(run: Run, spike, run_id: str) -> SpikeContext:
    manifest = run.manifest
    cls = ((manifest.get("optimizer") or {}).get("class") or "").lower()
    family = "adam" if "adam" in cls else ("sgd" if cls.endswith("sgd") else "other")
    group = ((manifest.get("optimizer") or {}).get("param_groups") or [{}])[0]
    peak_loss = float(spike.peak_loss) if spike.peak_loss is not None else math.nan
    return SpikeContext(
        run_id=run_id, spike_id=int(spike.spike_id), onset=int(spike.onset),
        peak=int(spike.peak), end=None if spike.end is None else int(spike.end),
        peak_loss=peak_loss, baseline_loss=float(spike.baseline or math.nan),
        optimizer=family, momentum=float(group.get("momentum", 0.0) or 0.0),
        betas=tuple(group["betas"]) if group.get("betas") else None, eps=group.get("eps"),
        nonfinite=bool(getattr(spike, "nonfinite", False) or not math.isfinite(peak_loss)),
        task=dict(manifest.get("task") or {}), hparams=run_settings(manifest),
        signal=str(getattr(spike, "signal", "loss") or "loss"))


def _measure(ev: Evidence, scene: Scene, engines, progress: Progress | None) -> None:
    """Run each engine on the scene; one that cannot run or fails only records why."""
    spike_id = ev.context.spike_id
    for i, engine in enumerate(engines):
        if progress:
            progress(spike_id, engine, i, len(engines))
        try:
            with attention_kernel(ENGINES[engine]):  # the math kernel unless FORWARD_ONLY
                ENGINES[engine].measure(ev, scene)
        except Failed as why:
            ev.fail(engine, str(why))
        except Skip as why:
            ev.skip(engine, str(why))
        except Exception as exc:
            ev.fail(engine, f"{engine} engine failed: {type(exc).__name__}: {exc}")
    if progress:
        progress(spike_id, "done", len(engines), len(engines))


def _measure_from_steps(ev: Evidence, run: Run, engines) -> None:
    """Without snapshots, the engines that can measure from steps/ alone still run."""
    scene = Scene(run=run, context=ev.context, window=select([], onset=0, peak=0, end=None),
                  replay=None, replay_error="", settings=None, device=torch.device("cpu"))
    chosen = [e for e in engines if getattr(ENGINES[e], "WITHOUT_SNAPSHOTS", False)]
    for engine in chosen:
        ev.skipped.pop(engine, None)
        ev.failed.pop(engine, None)
    _measure(ev, scene, chosen, None)


def _judge(spec, ev: Evidence) -> Finding:
    """The rule's finding; a rule that raises becomes inconclusive with the error."""
    try:
        return spec.run(ev)
    except Exception as exc:
        return inconclusive(spec.name, f"rule failed: {type(exc).__name__}: {exc}")


def _own_snapshots(run: Run, ctx: SpikeContext, source: str) -> list[int]:
    """Snapshot steps that belong to this spike, plus the baselines before its onset.

    Online spikes own the snapshots tagged with their id; offline ones the untagged steps
    near them. Another spike's snapshots are never borrowed.
    """
    hi = (ctx.end if ctx.end is not None else ctx.peak) + 256
    own = []
    for info in run.snapshots:
        if info.role == "baseline":
            if info.step < ctx.onset:
                own.append(info.step)
        elif source == "online" and info.spike_id is not None:
            if int(info.spike_id) == ctx.spike_id:
                own.append(info.step)
        elif ctx.onset - 256 <= info.step <= hi:
            own.append(info.step)
    return own


def _scene(run: Run, ctx: SpikeContext, source, replay, replay_error, settings, dev) -> Scene:
    available = _own_snapshots(run, ctx, source)
    if ctx.onset not in available:
        budget = [e.get("message", "") for e in run.events
                  if e.get("type") == "warning" and int(e.get("step", -1)) <= ctx.onset]
        bad = run.unreadable_snapshot(ctx.onset)  # a file the reader skipped is named, not "not captured"
        raise LookupError(f"the onset snapshot {bad[0]} is unreadable ({bad[1]})" if bad else
                          f"the onset step {ctx.onset} was not captured"
                          + (f" ({budget[-1]})" if budget else ""))
    window = select(available, onset=ctx.onset, peak=ctx.peak, end=ctx.end,
                    max_snapshots=settings.max_snapshots)
    ctx = SpikeContext(**{**asdict(ctx), "ref_step": window.ref,
                          "pre_steps": tuple(s for s in window.steps if s < ctx.onset),
                          "post_steps": tuple(s for s in window.steps if s > ctx.peak)})
    return Scene(run=run, context=ctx, window=window, replay=replay,
                 replay_error=replay_error, settings=settings, device=dev)


def _tables(analysis: Analysis) -> dict[str, list[dict]]:
    spikes, measurements, findings = [], [], []
    for r in analysis.spikes:
        c = r.context
        spikes.append({
            "run_id": analysis.run_id, "spike_id": c.spike_id, "onset_step": c.onset,
            "peak_step": c.peak, "end_step": c.end, "peak_loss": c.peak_loss,
            "baseline_loss": c.baseline_loss, "magnitude": c.magnitude, "source": r.source,
            "verdict": r.verdict, "verdict_score": r.verdict_score,
            "verdict_message": r.verdict_message,
        })
        for step, engine, metric, value in sorted(r.evidence.rows):
            measurements.append({"run_id": analysis.run_id, "spike_id": c.spike_id, "step": step,
                                 "engine": engine, "metric": metric, "value": value})
        findings.extend(f.to_row(analysis.run_id, c.spike_id) for f in r.findings)
    measurements.extend({"run_id": analysis.run_id, "spike_id": RUN_LEVEL, "step": step,
                         "engine": BASELINE_ENGINE, "metric": metric, "value": value}
                        for step, metric, value in sorted(analysis.baselines))
    return {"spikes": spikes, "measurements": measurements, "findings": findings}


def _meta(analysis: Analysis, rules) -> dict:
    return {
        "forensics_version": forensics.__version__, "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": analysis.device, "settings": asdict(analysis.settings),
        "mechanisms": list(rules), "notes": analysis.notes,
        "skipped": {str(r.context.spike_id): r.evidence.skipped for r in analysis.spikes},
        "failed": {str(r.context.spike_id): r.evidence.failed for r in analysis.spikes},
    }
