"""Dependencies: shared resources created in the app's lifespan and reached from app.state.

Every route reaches what the lifespan built through these, never `request.app.state`
directly, so a test app built by `create_app(settings)` serves with its own settings,
pools and caches, and nothing is made lazily on a first request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tilesight.imagery.sources import SourceCache
from tilesight.predict import PredictContext
from tilesight.settings import Settings
from tilesight.triton import TritonClient


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_sessionmaker(request: Request) -> sessionmaker[Session]:
    """For work that outlives the request's own session (a streamed body, a poll loop)."""
    return request.app.state.sessionmaker


SessionmakerDep = Annotated[sessionmaker[Session], Depends(get_sessionmaker)]


def get_session(factory: SessionmakerDep) -> Iterator[Session]:
    with factory() as session:
        yield session


def get_redis(request: Request) -> aioredis.Redis:
    return request.app.state.redis


def get_triton(request: Request) -> TritonClient:
    return request.app.state.triton


def get_celery(request: Request) -> Celery:
    """A Celery producer (no worker): routes send tasks by name, never import worker/."""
    return request.app.state.celery


def get_source_cache(request: Request) -> SourceCache:
    """The process's cache of sources: a burst of tiles costs one query, and the routes
    that change a source make this process forget it at once."""
    return request.app.state.source_cache


def get_predict_context(request: Request) -> PredictContext:
    """One context per app: its in-flight map is what makes single flight work."""
    return request.app.state.predict_context


def tile_scale(request: Request) -> int:
    """2 on a tile route whose path ends in `@2x.<format>`, else 1: the 256 px and the
    512 px route of a tileset share one handler."""
    route = request.scope.get("route")
    return 2 if route is not None and "@2x." in getattr(route, "path", "") else 1


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
TritonDep = Annotated[TritonClient, Depends(get_triton)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
SourceCacheDep = Annotated[SourceCache, Depends(get_source_cache)]
PredictContextDep = Annotated[PredictContext, Depends(get_predict_context)]
ScaleDep = Annotated[int, Depends(tile_scale)]
