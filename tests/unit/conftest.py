"""Fixtures shared by the unit tests that need a real PostgreSQL (PostGIS SQL cannot be
faked): one server per session, migrated, for every module that writes buildings."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tilesight.db import make_engine, make_sessionmaker, migrate
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
