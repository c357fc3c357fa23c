"""Keyframe mode: a full state every K steps, the steps in between replayed when a snapshot is written.
The run a reader sees is the same as a dense recording's (weights within float tolerance, same verdict)."""

import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from forensics import Recorder, open_run
from forensics.analyzer.pipeline import Settings, analyze

ONSET = 60


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Dropout(0.1),
                               torch.nn.Linear(16, 1)).double()


def _record(path, *, meddle_at=None, **options):
    """A planted bad batch at ONSET (targets ×1000); dropout, so the replay needs each step's RNG state.
    `meddle_at`: a step after which the weights are changed outside the optimizer (a replay cannot know)."""
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(model, opt, path, ring_size=6, tail=3, baseline_every=0, probe=None,
                      model_factory=None, **options) as rec:
            for t in range(90):
                x = torch.randn(8, 3, generator=g, dtype=torch.float64)
                y = x.sum(1, keepdim=True).sin() * (1000.0 if t == ONSET else 1.0)
                opt.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                rec.observe(loss, {"x": x, "y": y})
                opt.step()
                if t == meddle_at:
                    with torch.no_grad():
                        model[0].weight.mul_(0.5)
    return open_run(path), model, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("kf")
    dense = _record(d / "dense", mode="dense")
    key = _record(d / "key", mode="keyframe", keyframe_every=5)
    return dense, key


def test_keyframe_snapshots_equal_dense_ones(pair):
    (dense, _, _), (key, _, warned) = pair
    assert json.loads((key.path / "run.json").read_text())["recorder"]["mode"] == "keyframe"
    assert key.steps.column("loss").to_pylist() == dense.steps.column("loss").to_pylist()
    assert [s.onset for s in key.spikes] == [s.onset for s in dense.spikes]
    assert ONSET in [s.onset for s in key.spikes]
    roles = [(s.step, s.role) for s in key.snapshots if s.role != "context"]
    assert roles == [(s.step, s.role) for s in dense.snapshots if s.role != "context"]
    assert (ONSET, "onset") in roles and [t for t, r in roles if r == "pre"][-5:] == list(range(ONSET - 5, ONSET))
    rebuilt = 0
    for step, _ in roles:
        a, b = key.snapshot(step).load(), dense.snapshot(step).load()
        rebuilt += a.meta.get("reconstructed") is True
        assert a.meta["loss"] == b.meta["loss"] and a.meta["optimizer_step"] == b.meta["optimizer_step"]
        for part in ("params", "grads", "batch"):
            for name, v in getattr(b, part).items():
                torch.testing.assert_close(getattr(a, part)[name], v, rtol=1e-9, atol=1e-12)
        for kind, tensors in b.state.items():
            for name, v in tensors.items():
                torch.testing.assert_close(a.state[kind][name], v, rtol=1e-9, atol=1e-12)
        if a.meta.get("reconstructed"):
            assert float(a.meta["replay_loss_rel_error"]) < 1e-9
    assert rebuilt >= len(roles) - len(roles) // 5 - 1  # most are replayed, not keyframes
    assert not [w for w in warned if "replay" in w]


def test_keyframe_run_gets_the_same_verdict(pair):
    (dense, dmodel, _), (key, kmodel, _) = pair
    s = Settings(max_snapshots=6)
    a = analyze(dense.path, model=dmodel, loss_fn=F.mse_loss, write=False, settings=s)
    b = analyze(key.path, model=kmodel, loss_fn=F.mse_loss, write=False, settings=s)
    assert [x.verdict for x in b.spikes] == [x.verdict for x in a.spikes]
    assert a.spikes


def test_replay_self_check_flags_a_state_it_cannot_rebuild(tmp_path):
    """Weights changed outside the optimizer between two keyframes: the replay's losses no longer match the
    recorded ones; the snapshots say so and the recorder warns."""
    run, _, warned = _record(tmp_path / "run", mode="keyframe", keyframe_every=20, meddle_at=ONSET - 4)
    err = {s.step: float(s.load().meta.get("replay_loss_rel_error", 0)) for s in run.snapshots}
    # replayed from keyframe 40: exact before the meddling (after update 56), flagged after it; 60 is a keyframe
    assert err[ONSET - 5] == 0.0 and err[ONSET - 2] > 1e-3 and err[ONSET - 1] > 1e-3 and err[ONSET] == 0.0
    assert any("recomputed losses differ" in w for w in warned)
    # readers say so: the run's notes name exactly the flagged files, and analyze carries the notes
    flagged = sorted(s for s, e in err.items() if e > 1e-4)
    named = sorted(int(n.split("step-")[1][:8]) for n in run.notes if "reconstructed by a keyframe replay" in n)
    assert named == flagged and ONSET - 1 in named
    analysis = analyze(run, write=False, mechanisms=["data"])
    assert sum("reconstructed by a keyframe replay" in n for n in analysis.notes) == len(flagged)


def test_auto_mode_switches_to_keyframes_over_the_budget(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    with pytest.warns(Warning, match="exceeds memory_budget"):
        with Recorder(model, opt, tmp_path / "a", memory_budget=1000, probe=None) as rec:
            assert rec.mode == "keyframe"
    man = json.loads((tmp_path / "a" / "run.json").read_text())["recorder"]
    assert man["mode"] == "keyframe" and man["memory_budget"] == 1000
    with Recorder(model, opt, tmp_path / "b", probe=None) as rec:  # 1.2k params: far below 4 GiB
        assert rec.mode == "dense"
