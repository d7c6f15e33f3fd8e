"""Arms: grouping RUN configs by everything but the seed, naming, --arm parsing and checks."""

from __future__ import annotations

import pytest

from mrrobust.arms import (arm_configuration, default_reference, group_arms, parse_arm,
                           resolve_arms)
from mrrobust.errors import MrRobustError


def config(norm="batch", seed=0, **training):
    return {"model": {"arch": "preact_resnet", "norm": norm, "depth": 18, "width": 16, "groups": 4},
            "training": {"lr": 1e-3, "seed": seed, "augment": None, "workers": 2, "compile": False,
                         **training},
            "store": {"path": "/somewhere"}}


def test_runs_differing_only_in_seed_and_compute_settings_share_an_arm():
    configs = {"batch-seed0": config(), "batch-seed1": config(seed=1, workers=0, compile=True),
               "group-seed0": config("group"), "group-seed1": config("group", seed=1),
               "batch-aug-seed0": config(augment="noise:3"), "batch-aug-seed1": config(augment="noise:3", seed=1),
               "batch-lr": config(lr=1e-4)}
    arms = group_arms(configs)
    assert [(a.name, a.runs) for a in arms] == [
        ("batch", ["batch-seed0", "batch-seed1"]),
        ("group", ["group-seed0", "group-seed1"]),
        ("batch+augment=noise:3", ["batch-aug-seed0", "batch-aug-seed1"]),
        ("batch+lr=0.0001", ["batch-lr"])]
    assert "seed" not in arms[0].configuration and "store" not in arms[0].configuration
    assert arm_configuration(config(seed=5)) == arm_configuration(config(seed=7))
    assert default_reference(arms, {"batch": "batch"}) == "batch"


def test_default_reference_without_an_arm_named_batch():
    arms = group_arms({"a": config("group"), "b": config("batch", augment="noise")})
    assert [a.name for a in arms] == ["group", "batch"]
    arms = group_arms({"a": config("group"), "b": config("layer")})
    assert default_reference(arms, {"group": "group", "layer": "layer"}) is None


@pytest.mark.parametrize("text, expected", [
    ("batch=runs/a,runs/b", ("batch", ["runs/a", "runs/b"])),
    (" gn = r1 ", ("gn", ["r1"])),
])
def test_parse_arm(text, expected):
    assert parse_arm(text) == expected


@pytest.mark.parametrize("text, says", [("batch", "expected NAME=RUN"), ("=a,b", "expected NAME=RUN"),
                                        ("batch=", "expected NAME=RUN"), ("b a=r", "arm name")])
def test_parse_arm_refuses_in_one_line(text, says):
    with pytest.raises(MrRobustError, match=says) as err:
        parse_arm(text)
    assert "\n" not in str(err.value)


def test_resolve_arms(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    a, b, c = (str(tmp_path / n) for n in "abc")
    assert resolve_arms([a, b], None) == ([a, b], None)
    assert resolve_arms(None, {"x": [a, b], "y": [c]}) == ([a, b, c], {"x": [a, b], "y": [c]})
    assert resolve_arms([c, b, a], {"x": [a, b], "y": [c]})[0] == [a, b, c]
    for runs, arms, says in [(None, {"x": [a, a]}, "twice"), (None, {"x": [a], "y": [a]}, "and so does arm 'x'"),
                             (None, {"x": [str(tmp_path / "d")]}, "does not exist"),
                             ([a], {"x": [b]}, "not among the RUN folders given"),
                             ([a, b], {"x": [a]}, "is in no --arm"), (None, {"x": []}, "names no run")]:
        with pytest.raises(MrRobustError, match=says) as err:
            resolve_arms(runs, arms)
        assert "\n" not in str(err.value)
