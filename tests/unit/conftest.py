"""Fixtures shared by unit tests: the real Tanzania chips, cut once per session, and a
real PostgreSQL for those that write buildings (PostGIS SQL cannot be faked)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.unit.chips_support import SPEC, TANZANIA
from tilesight.db import make_engine, make_sessionmaker, migrate
from tilesight.model.data import Chip, cache_chips
from tilesight.model.sources import ChipFolder, load_footprints, prepare_tiles
from tilesight.settings import Settings
from tilesight.stack import Stack, free_port


@pytest.fixture(scope="session")
def factory() -> Iterator[sessionmaker[Session]]:
    """Sessions on a private, migrated PostGIS; tests keep apart by their own job ids."""
    home = Path(tempfile.mkdtemp(prefix="tilesight-unit-pg-"))
    settings = Settings(environment="test", home=home, postgres_port=free_port(), load_demo=False)
    stack = Stack(settings, components=["postgres"])
    try:
        stack.start()
        migrate(settings)
        engine = make_engine(settings)
        yield make_sessionmaker(engine)
        engine.dispose()
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def chips(tmp_path_factory: pytest.TempPathFactory) -> list[Chip]:
    """The four Tanzania tiles with their footprints, as SPEC cuts them (read-only)."""
    reader, geoms = ChipFolder(TANZANIA), load_footprints(TANZANIA / "labels.geojson")
    tiles = prepare_tiles(reader, geoms, SPEC.zoom)
    return cache_chips(reader, geoms, tiles, SPEC, tmp_path_factory.mktemp("chips"))
