"""Alembic environment: the URL comes from Tilesight's settings, the metadata from tables."""

from alembic import context
from sqlalchemy import create_engine

from tilesight.settings import get_settings
from tilesight.tables import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url


def include_object(obj, name, type_, reflected, compare_to):
    # PostGIS ships its own tables (spatial_ref_sys, topology...); never diff them.
    return not (type_ == "table" and reflected and compare_to is None)


def run_migrations_online() -> None:
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            include_object=include_object,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
