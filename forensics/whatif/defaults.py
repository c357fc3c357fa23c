"""The default counterfactuals of a spike: the changes its fired rules' specs declare
(`Mechanism.counterfactuals`), verdict first; `onset`/`peak` in `skip_batch=` name the spike's steps
(`onset`: the batch the rule blames, its evidence's `suspect_step` when it names one),
and `jump=before` sets the hyperparameter a `hyperparameter_jump` found back to its value before the jump.
A change that sets a hyperparameter to the value the run already uses is left out (a replay of
nothing; `forensics.analyzer.hints.run_settings` reads run.json). The z-loss and qk-layernorm
(the fixes for output-logit divergence and attention-logit growth) change the loss and the model,
which the replay cannot; their specs declare lr and weight-decay changes instead."""

from __future__ import annotations

from forensics.rundir.reader import Run, Spike


def fired_findings(run: Run, spike_id: int) -> dict[str, dict]:
    """{rule: its evidence (parsed JSON)} of the rules that fired on spike `spike_id`, the verdict
    first. Raises ValueError when the run has not been analyzed."""
    import json

    import pyarrow.parquet as pq

    from forensics.rundir.analysis import analysis_files

    meta, files = analysis_files(run.path)
    if meta is None or "findings" not in files:
        raise ValueError(f"{run.path}: not analyzed, so no rule has fired to take hints from: run "
                         f"`forensics analyze {run.path}` first, or name the changes with --change")
    rows = pq.read_table(files["findings"]).to_pylist()
    rows = [r for r in rows if r["spike_id"] == spike_id and r["status"] == "fired"]
    rows.sort(key=lambda r: (not r.get("primary"), -(r.get("score") or 0)))
    out = {}
    for r in rows:
        try:
            out[r["rule"]] = json.loads(r.get("evidence") or "{}")
        except ValueError:
            out[r["rule"]] = {}
    return out


def default_changes(run: Run, spike: Spike) -> tuple[list[str], list[str]]:
    """(change texts, rules they come from) for `spike`; empty when no fired rule declares any."""
    from forensics.analyzer.rules import SPECS

    from forensics.analyzer.hints import run_settings

    used = run_settings(run.manifest)
    texts, rules = [], []
    for rule, evidence in fired_findings(run, spike.spike_id).items():
        spec = SPECS.get(rule)
        for text in getattr(spec, "counterfactuals", ()) or ():
            text = text.replace("=onset", f"={_suspect(spike, evidence)}").replace("=peak", f"={spike.peak}")
            text = _before(text, evidence)
            if text and text not in texts and not already_used(text, used):
                texts.append(text)
                rules.append(rule)
    return texts, rules


def _suspect(spike: Spike, evidence: dict) -> int:
    """The batch a rule blames: its evidence's `suspect_step` (the data rule may name the step
    before a probe-opened onset, whose update the probe shows one step later), else the onset."""
    step = evidence.get("suspect_step")
    return int(step) if isinstance(step, (int, float)) and step == step else spike.onset


def already_used(text: str, used: dict) -> bool:
    """Whether the change `text` only sets hyperparameters to the values in `used` (e.g.
    "beta2=0.95" for a run at β₂ = 0.95); relative (`x0.5`) and other changes never are."""
    edits = [e.partition("=") for e in text.split("+")]
    try:
        return all(sep and name.strip() in used and not value.strip().startswith("x")
                   and float(value) == float(used[name.strip()]) for name, sep, value in edits)
    except ValueError:
        return False


def _before(text: str, evidence: dict) -> str | None:
    """`jump=before` (hyperparameter_jump): the jumped hyperparameter set back to its value before
    the jump, from the finding's evidence (`hparam`, `old`); None when the evidence lacks it or the
    replay cannot set that hyperparameter."""
    if text != "jump=before":
        return text
    from forensics.whatif.changes import HPARAMS

    name, old = evidence.get("hparam"), evidence.get("old")
    if name not in HPARAMS or not isinstance(old, (int, float)):
        return None
    return f"{name}={old:g}"
