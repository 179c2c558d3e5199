"""Dependencies: shared resources created in the app's lifespan and reached from app.state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from tilesight.settings import Settings
from tilesight.triton import TritonClient


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    with factory() as session:
        yield session


def get_redis(request: Request) -> aioredis.Redis:
    return request.app.state.redis


def get_triton(request: Request) -> TritonClient:
    return request.app.state.triton


def get_celery(request: Request) -> Celery:
    """A Celery producer (no worker): routes send tasks by name, never import worker/."""
    return request.app.state.celery


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
TritonDep = Annotated[TritonClient, Depends(get_triton)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
