"""Triton's CPU sizing: instances x threads never exceed the cores, and the load request
carries the instance count while keeping the rest of config.pbtxt."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tilesight import registry, tritonserver
from tilesight.settings import PROJECT_ROOT, Settings
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


class RecordingTriton:
    """Stands in for the Triton client: remembers the load requests it was given."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, str | None]] = []

    async def load_model(self, model: str, config: str | None = None) -> None:
        self.loads.append((model, config))


def test_a_reload_keeps_the_instance_count_that_up_gave(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A promote or a new version reloads the model: without the override Triton would
    fall back to config.pbtxt's single instance on a 16-core box."""
    (tmp_path / "buildings").mkdir()
    shutil.copy(PROJECT_ROOT / "model_repo" / "buildings" / "config.pbtxt", tmp_path / "buildings")
    monkeypatch.setattr(tritonserver, "cpu_cores", lambda: 16)
    triton = RecordingTriton()
    settings = Settings(environment="test", home=tmp_path, model_repo=tmp_path)
    asyncio.run(registry.ensure_loaded(triton, "buildings", settings))  # type: ignore[arg-type]
    [(name, config)] = triton.loads
    assert name == "buildings"
    assert json.loads(config or "{}")["instance_group"] == [{"count": 4, "kind": "KIND_CPU"}]
