"""The retrain of a job's reviews starts from the job's version with that version's own
network, shape, zoom and context, whatever the spec's defaults are."""

from __future__ import annotations

import json
from pathlib import Path

from tilesight.jobs.retrain import shape_of
from tilesight.training.spec import RunRequest

ROOT = Path(__file__).resolve().parents[2]


def test_a_resunet_border_version_is_retrained_as_itself() -> None:
    meta = {
        "architecture": {"name": "resunet", "width": 24, "depth": 5, "classes": 2},
        "classes": [{"name": "building"}, {"name": "border"}],
        "zoom": 19,
        "buffer": 32,
    }
    spec = RunRequest(source="s", labels={}, init_from_version=1, **shape_of(meta)).spec()
    assert (spec.architecture, spec.width, spec.depth, spec.border) == ("resunet", 24, 5, True)


def test_the_shipped_demo_versions_give_their_own_shape() -> None:
    for version in sorted((ROOT / "model_repo" / "buildings").glob("[0-9]*")):
        meta = json.loads((version / "metadata.json").read_text())
        shape = shape_of(meta)
        assert shape["width"] == meta["architecture"]["width"]
        assert shape.get("architecture", "unet") == meta["architecture"].get("name", "unet")
