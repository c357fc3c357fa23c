"""A stranger's run.json must not run code without consent: hostile factory and loss specs."""

import json
import sys

import pytest
import torch

from forensics.losses import resolve_loss
from forensics.rundir.model import MAX_TRUSTED_PARAMETERS, build_model, import_callable


def _hostile(canary):
    cmd = f"touch {canary}"
    return [
        # the attribute walk through a trusted module to os.system
        ("forensics.zoo.models:torch.os.system", {"command": cmd}),
        ("forensics.zoo.models:torch.serialization.os.system", {"command": cmd}),
        ("forensics.integrations.huggingface:torch.os.system", {"command": cmd}),
        ("forensics.integrations.huggingface:json.os.system", {"command": cmd}),
        # plain untrusted modules
        ("os:system", {"command": cmd}),
        ("builtins:eval", {"source": f"__import__('os').system('{cmd}')"}),
        ("subprocess:getoutput", {"cmd": cmd}),
        # dunder walks and private names of trusted modules
        ("forensics.zoo.models:__class__.__init__", {}),
        ("forensics.zoo.models:__builtins__", {}),
        ("forensics.zoo.models:_ACTIVATIONS", {}),
        ("forensics.zoo.models:nn", {}),
        # a submodule of a trusted prefix, and a prefix look-alike
        ("forensics.zoo.tasks:gaussian_regression", {}),
        ("forensics.zoo.models_evil:mlp", {}),
        # two colons
        ("forensics.zoo.models:mlp:x", {}),
    ]


def _write_run(tmp_path, factory, kwargs, loss="mse"):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"model": {"factory": factory, "kwargs": kwargs}, "loss": loss}))
    return run


@pytest.mark.parametrize("i", range(14))
def test_hostile_factory_is_refused_and_nothing_runs(tmp_path, i):
    canary = tmp_path / "canary"
    factory, kwargs = _hostile(canary)[i]
    manifest = {"model": {"factory": factory, "kwargs": kwargs}}
    with pytest.raises((PermissionError, ValueError)) as e:
        build_model(manifest, allow_import=False)
    assert factory in str(e.value)
    assert not canary.exists()


@pytest.mark.parametrize("i", range(14))
def test_hostile_loss_is_refused_and_nothing_runs(tmp_path, i):
    canary = tmp_path / "canary"
    spec, _ = _hostile(canary)[i]
    with pytest.raises((PermissionError, ValueError)) as e:
        resolve_loss(spec, allow_import=False)
    assert spec in str(e.value)
    assert not canary.exists()


def test_hostile_run_through_the_cli_names_the_run_and_runs_nothing(tmp_path):
    """`forensics analyze` on a run whose run.json names os.system: refused, nothing executed."""
    from typer.testing import CliRunner

    from forensics.cli import app

    canary = tmp_path / "canary"
    run = _write_run(tmp_path, "forensics.zoo.models:torch.os.system", {"command": f"touch {canary}"})
    res = CliRunner().invoke(app, ["analyze", str(run)])
    assert res.exit_code != 0
    assert not canary.exists()


def test_trusted_factories_still_resolve_without_consent():
    assert import_callable("forensics.zoo.models:mlp", allow_import=False).__name__ == "mlp"
    assert import_callable("forensics.zoo.models:two_layer", allow_import=False).__name__ == "two_layer"
    model = build_model({"model": {"factory": "forensics.zoo.models:mlp", "kwargs": {"sizes": [3, 4, 1]}}})
    assert sum(p.numel() for p in model.parameters()) == 3 * 4 + 4 + 4 + 1


def test_consent_still_imports_user_code():
    fn = import_callable("torch.nn.functional:mse_loss", allow_import=True)
    assert fn is torch.nn.functional.mse_loss


@pytest.mark.parametrize("kwargs, word", [
    ({"sizes": "5,4"}, "sizes"),                     # wrong type
    ({"sizes": [5, "4", 1]}, "sizes"),               # wrong element type
    ({"sizes": [5, 4, 1], "activation": 3}, "activation"),
    ({"sizes": [5, 4, 1], "bias": "yes"}, "bias"),
    ({"sizes": [5, 4, 1], "command": "ls"}, "signature"),   # unknown kwarg
    ([5, 4, 1], "JSON object"),
])
def test_trusted_factory_kwargs_are_type_checked(kwargs, word):
    with pytest.raises(ValueError, match=word):
        build_model({"model": {"factory": "forensics.zoo.models:mlp", "kwargs": kwargs}})


def test_parameter_budget_is_checked_before_allocating():
    """[5, 40000, 40000, 1] is 1.6e9 parameters (6.4 GB): refused, counted on the meta device."""
    sizes = [5, 40000, 40000, 1]
    n = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    assert n > MAX_TRUSTED_PARAMETERS
    with pytest.raises(ValueError, match=f"{n:,}"):
        build_model({"model": {"factory": "forensics.zoo.models:mlp", "kwargs": {"sizes": sizes}}})
    # a small explicit budget applies to small models too
    with pytest.raises(ValueError, match="budget"):
        build_model({"model": {"factory": "forensics.zoo.models:mlp", "kwargs": {"sizes": [3, 4, 1]}}},
                    max_parameters=10)


def test_no_module_is_imported_for_an_untrusted_spec():
    """Refusal happens before importing: an untrusted module never reaches sys.modules."""
    name = "forensics_untrusted_probe_module"
    with pytest.raises(PermissionError):
        import_callable(f"{name}:f", allow_import=False)
    assert name not in sys.modules
