"""The real chips most model tests train and score on: the four z19 Tanzania tiles in
tests/data, cut once per session with one spec (see the `chips` fixture in conftest)."""

from __future__ import annotations

from pathlib import Path

from tilesight.model.data import ChipSpec

TANZANIA = Path(__file__).resolve().parents[1] / "data" / "buildings" / "tanzania"
SPEC = ChipSpec(zoom=19, buffer=32, jitter=16)
