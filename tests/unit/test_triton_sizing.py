"""Triton's CPU sizing: instances x threads never exceed the cores, and the load request
carries the instance count while keeping the rest of config.pbtxt."""

from __future__ import annotations

import json

import pytest

from tilesight.settings import PROJECT_ROOT
from tilesight.tritonserver import config_override, instance_plan


@pytest.mark.parametrize(
    ("cores", "plan"), [(1, (1, 1)), (2, (1, 2)), (6, (1, 6)), (10, (2, 5)), (16, (4, 4))]
)
def test_instances_times_threads_fit_the_cores(cores: int, plan: tuple[int, int]) -> None:
    assert instance_plan(cores) == plan
    assert plan[0] * plan[1] <= cores


def test_the_override_sets_the_count_and_keeps_the_contract() -> None:
    folder = PROJECT_ROOT / "model_repo" / "buildings"
    assert config_override(folder, 1) is None  # the file already says one instance
    config = json.loads(config_override(folder, 4) or "{}")
    assert config["instance_group"] == [{"count": 4, "kind": "KIND_CPU"}]
    assert config["name"] == "buildings" and config["backend"] == "python"
    assert config["input"][0]["name"] == "image" and config["max_batch_size"] == 32
