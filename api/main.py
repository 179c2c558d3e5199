"""The app factory: builds the FastAPI app for one `Settings`, so tests can build their own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.gzip import GZipMiddleware

from api import cors, errors, security
from api.access import access
from api.middleware import RequestContext
from api.routes import (
    buildings,
    health,
    jobs,
    keys,
    metrics,
    models,
    predictions,
    reviews,
    sources,
    tiles,
    training,
)
from tilesight.db import make_engine, make_sessionmaker
from tilesight.imagery.sources import SourceCache
from tilesight.logs import configure_logging
from tilesight.predict import PredictContext
from tilesight.settings import Settings, get_settings
from tilesight.triton import TritonClient

ROUTERS = [
    health.router,
    metrics.router,
    sources.router,
    tiles.router,
    models.router,
    predictions.router,
    jobs.router,
    reviews.router,
    buildings.router,
    training.router,
    keys.router,
]

# Who may call each router (keyed by the router's first tag) and from which rate budget;
# reads need `read`, writes the scope named. Routers not listed are open (health, metrics).
POLICIES = {
    "tiles": access(budget="tiles", public=True),
    "predictions": access(budget="predictions", public=True),
    "sources": access(write="admin"),
    "models": access(write="admin"),
    "jobs": access(write="submit", budget="jobs", read_budget="default"),
    "buildings": access(budget="tiles"),
    "training": access(write="submit", budget="jobs", read_budget="default"),
    "keys": access(read="admin", write="admin"),
}

DESCRIPTION = """
Tilesight serves aerial imagery as XYZ tiles and paints a building-detection model's
predictions on top, live. Area jobs turn a drawn polygon into building footprints in
PostGIS, downloadable as GeoJSON. Every error is a JSON body with an `error` message
that says what to change.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        app.state.redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=2,
            socket_connect_timeout=1,
            health_check_interval=10,
        )
        app.state.triton = TritonClient(settings.triton_url, settings.triton_timeout_s)
        app.state.celery = Celery("tilesight", broker=settings.celery_broker_url)
        app.state.source_cache = SourceCache()
        app.state.predict_context = PredictContext(
            settings, app.state.triton, app.state.redis if settings.prediction_cache else None
        )
        try:
            yield
        finally:
            app.state.celery.close()
            await app.state.triton.close()
            await app.state.redis.aclose()
            engine.dispose()

    app = FastAPI(
        title="Tilesight",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    app.add_middleware(RequestContext, max_body_bytes=settings.max_body_bytes)
    cors.install(app, settings)
    security.install(app, settings)
    for router in ROUTERS:
        policy = POLICIES.get(str(router.tags[0])) if router.tags else None
        app.include_router(
            router,
            dependencies=[Depends(policy)] if policy else None,
            responses=errors.COMMON_RESPONSES,
        )
    if (settings.web_dir / "index.html").exists():
        # Gzip only the viewer's own files: tiles are already compressed images.
        static = GZipMiddleware(StaticFiles(directory=settings.web_dir, html=True), 1000)
        app.mount("/", static, name="web")
    return app
