"""The demo data loaded at first start: imagery sources and the shipped model.

Called by `tilesight up` and by the test stack after migrations; idempotent, and fast on
every start after the first (COG conversion happens once, cached under the home).
"""

from __future__ import annotations

from collections.abc import Iterator

from tilesight.db import make_engine, make_sessionmaker
from tilesight.imagery.demo import register_demo_sources
from tilesight.registry import sync_models
from tilesight.settings import Settings


def load_demo(settings: Settings) -> Iterator[str]:
    """Register what is not registered yet; yields one line per thing done."""
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as session:  # each registration commits its own work
            for source_id in register_demo_sources(settings, session):
                yield f"imagery source {source_id} registered"
            changes = sync_models(settings, session)  # the shipped model_repo
            session.commit()
            yield from changes
    finally:
        engine.dispose()
