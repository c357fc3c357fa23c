"""Findings as a linter reports them: one header per spike with its verdict, one line per finding.

`collect(catalog)` reads the catalog's views into plain, JSON-ready dicts (what
`forensics report --format json` prints); `render_text` turns them into lines
(`run:step  mechanism  status  message`).
"""

from __future__ import annotations

import json

from forensics.analyzer.mechanisms import MECHANISMS, NOT_ANALYZED
from forensics.rundir.jsonsafe import jsonsafe

_STATUS_ORDER = {"fired": 0, "inconclusive": 1, "not_fired": 2}


def collect(catalog) -> list[dict]:
    """Every spike of the catalog's runs, in run then onset order, each with its findings.

    Keys: run, run_path, spike_id, onset_step, peak_step, end_step, peak_loss, baseline_loss,
    magnitude, source, analyzed, verdict, verdict_score, verdict_message, sub_peaks (peaks of the
    episode: re-triggers merged into it, 1 for a single spike), recovered (False: the episode ended
    without the loss coming back; None: open at the run's end), findings (each:
    mechanism, status, score, primary, message, hint, reason, evidence, thresholds; the last
    two parsed from JSON), whatif (the stored `forensics whatif` rows of the spike). Non-finite
    numbers become the strings "nan" / "inf" / "-inf", as in the analyzer's evidence, so the
    result is strict JSON.
    """
    from forensics.catalog.views import query

    order = {r.run_id: i for i, r in enumerate(catalog.runs)}
    spikes = query(catalog, """
        SELECT s.run_id, r.path, r.analyzed, s.spike_id, s.onset_step, s.peak_step, s.end_step,
               s.peak_loss, s.baseline_loss, s.magnitude, s.source, s.verdict, s.verdict_score,
               s.verdict_message, s.sub_peaks, s.recovered
        FROM spikes s JOIN runs r USING (run_id)""").to_pylist()
    findings: dict[tuple[str, int], list[dict]] = {}
    for f in query(catalog, 'SELECT run_id, spike_id, rule, status, score, "primary", message, '
                            "hint, reason, evidence, thresholds FROM findings").to_pylist():
        findings.setdefault((f["run_id"], f["spike_id"]), []).append({
            "mechanism": f["rule"], "status": f["status"], "score": jsonsafe(f["score"]),
            "primary": bool(f["primary"]), "message": f["message"] or "",
            "hint": f["hint"] or "", "reason": f["reason"] or "",
            "evidence": _parse(f["evidence"]), "thresholds": _parse(f["thresholds"]),
        })
    whatifs: dict[tuple[str, int], list[dict]] = {}
    sql = ("SELECT run_id, spike_id, change, reproduced, replay_error, peak_ratio, recorded_peak_ratio, "
           "spike_gone, recover_steps, diagnosis FROM whatif")
    for w in query(catalog, sql).to_pylist():
        whatifs.setdefault((w.pop("run_id"), w.pop("spike_id")), []).append(
            {k: jsonsafe(v) for k, v in w.items()})
    out = []
    for s in sorted(spikes, key=lambda s: (order.get(s["run_id"], 0), s["onset_step"] or 0,
                                           s["spike_id"] or 0)):
        fs = findings.get((s["run_id"], s["spike_id"]), [])
        fs.sort(key=_finding_order)
        out.append({
            "run": s["run_id"], "run_path": s["path"], "spike_id": s["spike_id"],
            "onset_step": s["onset_step"], "peak_step": s["peak_step"], "end_step": s["end_step"],
            "peak_loss": jsonsafe(s["peak_loss"]), "baseline_loss": jsonsafe(s["baseline_loss"]),
            "magnitude": jsonsafe(s["magnitude"]), "source": s["source"],
            "analyzed": bool(s["analyzed"]), "verdict": s["verdict"],
            "verdict_score": jsonsafe(s["verdict_score"]), "verdict_message": s["verdict_message"],
            "sub_peaks": s["sub_peaks"] or 1, "recovered": s["recovered"], "findings": fs,
            "whatif": whatifs.get((s["run_id"], s["spike_id"]), []),
        })
    return out


def render_text(spikes: list[dict], runs=(), *, hints: bool = True) -> list[str]:
    """Lines of the text report: per spike a header, then `run:step  mechanism  status  message`.

    `runs` (the catalog's RunEntry list) adds a line for each run without spikes.
    """
    lines: list[str] = []
    width = max([len(f["mechanism"]) for s in spikes for f in s["findings"]] + [len("mechanism")])
    by_run: dict[str, list[dict]] = {}
    for s in spikes:
        by_run.setdefault(s["run"], []).append(s)
    order = [r.run_id for r in runs] + [r for r in by_run if r not in {x.run_id for x in runs}]
    steps = {r.run_id: r.num_steps for r in runs}
    skipped = {r.run_id: len(r.skipped_files) for r in runs}
    for run in order:
        if run not in by_run:
            gap = f"; {skipped[run]} unreadable file(s) skipped, see the notes" if skipped.get(run) else ""
            lines.append(f"{run}: no spikes ({steps.get(run, 0)} steps{gap})")
            continue
        for s in by_run[run]:
            lines.append(_header(s))
            lines.extend(_finding_lines(s, width, hints))
            lines.extend(_whatif_lines(s, width))
    return lines


def _finding_lines(s: dict, width: int, hints: bool) -> list[str]:
    lines = []
    where = f"{s['run']}:{s['onset_step']}"
    for f in s["findings"]:
        lines.append(f"  {where}  {f['mechanism']:<{width}}  {f['status']:<12}  {_flat(f['message'])}")
        if hints and f["status"] == "fired" and f["hint"]:
            lines.append(f"  {'':<{len(where)}}  {'':<{width}}  {'hint':<12}  {_flat(f['hint'])}")
    return lines


def _whatif_lines(s: dict, width: int) -> list[str]:
    """`forensics whatif` results stored for the spike: the self-check when it failed, else one
    sentence per counterfactual (forensics.whatif.text)."""
    from forensics.whatif.text import sentence

    lines, where = [], f"{s['run']}:{s['onset_step']}"
    for w in s.get("whatif", []):
        if w["change"] == "none":
            if not w["reproduced"]:
                lines.append(f"  {where}  {'what if':<{width}}  {'':<12}  {_flat(w['diagnosis'])}")
            continue
        text = sentence(w["change"], _float(w["peak_ratio"]), _float(w["recorded_peak_ratio"]),
                        w["spike_gone"], w["recover_steps"])
        lines.append(f"  {where}  {'what if':<{width}}  {'replayed':<12}  {text}")
    return lines


def _float(v):
    return float(v) if isinstance(v, str) else v


def summary(spikes: list[dict], num_runs: int, num_skipped: int = 0) -> str:
    """One closing line: how many runs and spikes, and the verdicts by count."""
    counts: dict[str, int] = {}
    for s in spikes:
        key = s["verdict"] if s["analyzed"] and s["verdict"] else "not analyzed"
        counts[key] = counts.get(key, 0) + 1
    parts = ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    text = f"{num_runs} run{'s' * (num_runs != 1)}, {len(spikes)} spike{'s' * (len(spikes) != 1)}"
    text += f" ({parts})" if parts else ""
    if num_skipped:
        text += f"; {num_skipped} run{'s' * (num_skipped != 1)} skipped (unreadable)"
    return text


def _header(s: dict) -> str:
    end = s["end_step"] if s["end_step"] is not None else "open"
    mag = s["magnitude"]
    size = f", ×{mag:.3g}" if isinstance(mag, float) else (f", ×{mag}" if mag is not None else "")
    peaks = s.get("sub_peaks") or 1
    subs = f", {peaks} sub-peaks" if peaks > 1 else ""
    subs += ", not recovered" if s.get("recovered") is False else ""
    where = f"{s['run']}:{s['onset_step']}  spike {s['spike_id']}  steps {s['onset_step']}..{end} " \
            f"(peak {s['peak_step']}{size}{subs})"
    if not s["analyzed"]:
        return f"{where}  verdict: not analyzed (run `forensics analyze {s['run_path']}`)"
    if s["verdict"] == NOT_ANALYZED:  # a failure: the reason, never a score that reads as an answer
        return f"{where}  verdict: NOT ANALYZED, {_flat(s['verdict_message'])}"
    score = s["verdict_score"]
    score_text = f" ({score:.2f})" if isinstance(score, float) else ""
    message = f": {_flat(s['verdict_message'])}" if s["verdict_message"] else ""
    return f"{where}  verdict: {s['verdict']}{score_text}{message}"


def _finding_order(f: dict):
    rank = MECHANISMS.index(f["mechanism"]) if f["mechanism"] in MECHANISMS else len(MECHANISMS)
    return (not f["primary"], _STATUS_ORDER.get(f["status"], 3), rank, f["mechanism"])


def _parse(text):
    if text is None:
        return {}
    try:
        return jsonsafe(json.loads(text))
    except (TypeError, ValueError):
        return {"unparsed": str(text)}


def _flat(text) -> str:
    return " ".join(str(text).split())
