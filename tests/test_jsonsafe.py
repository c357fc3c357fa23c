"""The one NaN-safe JSON helper (forensics.rundir.jsonsafe) and the writers that go through it."""

from __future__ import annotations

import datetime
import json
import math
from decimal import Decimal

import numpy as np
import pytest
import torch

from forensics.rundir import atomic
from forensics.rundir.events import EventLog
from forensics.rundir.jsonsafe import dumps, jsonsafe


def strict_loads(text: str):
    """json.loads that refuses NaN / Infinity tokens, as strict readers (browsers, jq) do."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value, expected", [
    (float("nan"), "nan"), (float("inf"), "inf"), (-math.inf, "-inf"),
    (np.float32("nan"), "nan"), (np.float64("-inf"), "-inf"), (np.float16(1.5), 1.5),
    (np.int64(7), 7), (np.bool_(True), True), (True, True), (None, None), ("nan", "nan"),
    (2.5, 2.5), (3, 3),
])
def test_scalars(value, expected):
    got = jsonsafe(value)
    assert got == expected and type(got) is type(expected)


def test_nested_containers_keys_and_arrays():
    value = {1: [float("nan"), (np.float32(2.0), {"x": -math.inf})], "a": np.array([[1, 2], [3, 4]]),
             "b": np.array([0.5, np.nan]), "c": np.float64(0.25), "d": frozenset({4})}
    assert jsonsafe(value) == {"1": ["nan", [2.0, {"x": "-inf"}]], "a": [[1, 2], [3, 4]],
                               "b": [0.5, "nan"], "c": 0.25, "d": [4]}
    strict_loads(dumps(value))  # no NaN token anywhere


def test_tensors_of_any_shape_and_with_grad():
    assert jsonsafe(torch.tensor(float("inf"))) == "inf"
    assert jsonsafe(torch.tensor(3)) == 3
    assert jsonsafe(torch.tensor([1.0, float("nan")], requires_grad=True)) == [1.0, "nan"]
    assert jsonsafe(torch.zeros(2, 1, dtype=torch.float64)) == [[0.0], [0.0]]


def test_other_types_fall_back_to_repr_or_str():
    when = datetime.date(2026, 1, 2)
    assert jsonsafe(when) == repr(when)
    assert jsonsafe({"d": when, "m": Decimal("1.5")}, fallback=str) == {"d": "2026-01-02", "m": "1.5"}
    assert json.loads(dumps([when], fallback=str, indent=1)) == ["2026-01-02"]


def test_writers_never_emit_nan_tokens(tmp_path):
    """Control and planted fault: before the helper, write_json wrote a bare NaN token."""
    atomic.write_json(tmp_path / "a.json", {"loss": float("nan"), "ok": 1.0, "v": np.float32(np.inf)})
    assert strict_loads((tmp_path / "a.json").read_text()) == {"loss": "nan", "ok": 1.0, "v": "inf"}
    log = EventLog(tmp_path, fsync=False)
    log.append("spike_open", spike_id=0, step=3, loss=np.float32("nan"), grads=torch.tensor([1.0]))
    event = strict_loads((tmp_path / "events.jsonl").read_text())
    assert event == {"type": "spike_open", "spike_id": 0, "step": 3, "loss": "nan", "grads": [1.0]}
