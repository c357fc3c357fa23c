"""A spike whose evidence could not be measured is `not_analyzed`, with the reason first; it
never reads as `unexplained` or as another cause. Live model and loss objects replace the
ones named in run.json (nothing imported), and a loss that cannot be re-imported is named."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from forensics import cli
from forensics.analyzer.pipeline import analyze
from forensics.losses import reimport_problem
from forensics.rundir.model import build_model

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"
pytestmark = pytest.mark.skipif(not (SAMPLES / "bad_batch" / "run.json").is_file(),
                                reason="sample_runs/ not recorded (forensics demo)")
runner = CliRunner()


def half_mse(out, y):
    """A loss defined in a script: (1/2N)Σ(f−y)²."""
    return 0.5 * ((out - y.reshape(out.shape)) ** 2).mean()


def _copy(tmp_path, name="bad_batch", **changes):
    dst = tmp_path / name
    shutil.copytree(SAMPLES / name, dst, ignore=shutil.ignore_patterns("analysis"))
    manifest = json.loads((dst / "run.json").read_text())
    model = build_model(manifest)
    for key, value in changes.items():
        target = manifest
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    (dst / "run.json").write_text(json.dumps(manifest))
    return dst, model


def test_control_an_intact_run_keeps_its_verdict(tmp_path):
    run_dir, _ = _copy(tmp_path)
    assert analyze(run_dir).spikes[0].verdict == "data"


def test_a_model_that_cannot_be_rebuilt_makes_the_spike_not_analyzed(tmp_path):
    run_dir, _ = _copy(tmp_path, **{"model.factory": "not_a_module_anywhere:make"})
    spike = analyze(run_dir).spikes[0]
    assert spike.verdict == "not_analyzed"
    assert spike.verdict_message.startswith("data could not be judged: model not rebuilt")
    assert spike.verdict_score == 0.0 and not any(f.primary for f in spike.findings)
    meta = json.loads((run_dir / "analysis" / "meta.json").read_text())
    assert "model not rebuilt" in meta["failed"]["0"]["data"]


def Wrapped(model, kind):  # noqa: N802
    """The same model (same parameter names), its forward returning `kind` around its output."""
    plain = model.forward

    def forward(x):
        out = plain(x)
        if kind == "tuple":
            return (out, None)
        if kind == "logits":  # like a Hugging Face ModelOutput
            return {"logits": out, "loss": None}
        return {"hidden": out}  # no tensor the loss could take

    model.forward = forward
    return model


@pytest.mark.parametrize("kind", ["tuple", "logits"])
def test_a_live_model_with_structured_outputs_works(tmp_path, kind):
    run_dir, model = _copy(tmp_path)
    assert analyze(run_dir, model=Wrapped(model, kind)).spikes[0].verdict == "data"


def test_an_engine_that_raises_is_not_read_as_nothing_found(tmp_path):
    run_dir, model = _copy(tmp_path)
    spike = analyze(run_dir, model=Wrapped(model, "hidden")).spikes[0]
    assert spike.verdict == "not_analyzed", spike.verdict_message
    assert "TypeError" in spike.verdict_message or "AttributeError" in spike.verdict_message


def test_a_script_loss_works_when_passed_live_and_is_named_when_not(tmp_path):
    run_dir, model = _copy(tmp_path, loss="__main__:half_mse",
                           **{"model.factory": "__main__:make_model"})
    spike = analyze(run_dir, model=model, loss_fn=half_mse).spikes[0]
    assert spike.verdict == "data", spike.verdict_message
    spike = analyze(run_dir, model=model).spikes[0]
    assert spike.verdict == "not_analyzed"
    assert "loss not rebuilt" in spike.verdict_message and "loss_fn=" in spike.verdict_message


def test_cli_exit_code_4_for_not_analyzed_spikes(tmp_path):
    run_dir, _ = _copy(tmp_path, **{"model.factory": "not_a_module_anywhere:make"})
    r = runner.invoke(cli.app, ["analyze", str(run_dir), "--device", "cpu"])
    assert r.exit_code == 4, r.output
    assert "not analyzed: bad_batch spike 0: data could not be judged" in r.stderr
    r = runner.invoke(cli.app, ["report", str(run_dir)])
    assert r.exit_code == 4, r.output
    assert "verdict: NOT ANALYZED, data could not be judged: model not rebuilt" in r.stdout
    ok_dir, _ = _copy(tmp_path / "ok")
    assert runner.invoke(cli.app, ["analyze", str(ok_dir), "--device", "cpu"]).exit_code == 0
    assert runner.invoke(cli.app, ["report", str(ok_dir)]).exit_code == 1


def test_reimport_problem_names_losses_another_process_cannot_import():
    def local(out, y):
        return out.sum()

    assert reimport_problem("mse") is None and reimport_problem("cross_entropy") is None
    assert reimport_problem(torch.nn.functional.mse_loss) is None
    assert reimport_problem("torch.nn.functional:mse_loss") is None
    assert "__main__" in reimport_problem("__main__:half_mse")
    assert "lambda" in reimport_problem(lambda o, y: o.sum())
    assert "local" in reimport_problem(local)
    assert "does not resolve" in reimport_problem("torch.nn.functional:no_such_loss")
    assert "loss_fn=" in reimport_problem(local)


def _truncate_chunk(run_dir: Path, index: int) -> Path:
    chunk = sorted((run_dir / "steps").glob("*.parquet"))[index]
    chunk.write_bytes(chunk.read_bytes()[:100])
    return chunk


def test_steps_gap_bounds_come_from_the_readable_neighbours(tmp_path):
    from forensics.rundir.reader import open_run

    run_dir, _ = _copy(tmp_path, "adam_beta2_lag")
    chunks = sorted((run_dir / "steps").glob("*.parquet"))
    import pyarrow.parquet as pq
    first = [pq.read_table(p).column("step")[0].as_py() for p in chunks]
    last = [pq.read_table(p).column("step")[-1].as_py() for p in chunks]
    _truncate_chunk(run_dir, 1)
    run = open_run(run_dir)
    (gap,) = run.steps_gaps
    assert (gap.after, gap.before) == (last[0], first[2]) and gap.path == chunks[1]
    assert gap.overlaps(first[1], first[1]) and not gap.overlaps(None, last[0])
    assert not gap.overlaps(first[2], None)


def test_an_unreadable_steps_chunk_in_the_spike_window_is_not_analyzed_naming_it(tmp_path):
    # control: a chunk far before the spike's look-back is lost; the verdict stands
    far, _ = _copy(tmp_path / "far", "adam_beta2_lag")
    _truncate_chunk(far, 0)
    assert analyze(far).spikes[0].verdict == "adam_beta2_lag"
    # the chunk holding the spike's steps is lost: history rules could not look
    near, _ = _copy(tmp_path / "near", "adam_beta2_lag")
    chunk = _truncate_chunk(near, -1)
    spike = analyze(near).spikes[0]
    assert spike.verdict == "not_analyzed", spike.verdict_message
    assert "unreadable" in spike.verdict_message and chunk.name in spike.verdict_message
    r = runner.invoke(cli.app, ["analyze", str(near), "--device", "cpu"])
    assert r.exit_code == 4, r.output
    assert chunk.name in r.stderr


def test_a_chosen_subset_names_the_rules_it_did_not_judge(tmp_path):
    run_dir, _ = _copy(tmp_path)
    spike = analyze(run_dir, mechanisms=["low_frequency"]).spikes[0]
    assert spike.verdict == "unexplained"
    assert "not judged" in spike.verdict_message and "data" in spike.verdict_message
    spike = analyze(run_dir, mechanisms=["data"]).spikes[0]
    assert spike.verdict == "data"  # control: the rule that explains it was chosen


def test_an_unreadable_onset_snapshot_is_named_not_called_uncaptured(tmp_path):
    run_dir, _ = _copy(tmp_path)
    onset = analyze(run_dir, write=False).spikes[0].context.onset
    from forensics.rundir.format import snapshot_name

    path = run_dir / "snapshots" / snapshot_name(onset)
    path.write_bytes(path.read_bytes()[:300])
    spike = analyze(run_dir).spikes[0]
    assert spike.verdict == "not_analyzed"
    assert f"the onset snapshot {path} is unreadable" in spike.verdict_message
    assert "not captured" not in spike.verdict_message
