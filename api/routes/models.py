"""Models and their versions: metadata, metrics, which one is promoted, and promotion."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.deps import SessionDep, SettingsDep, TritonDep
from tilesight import registry
from tilesight.errors import NotFound

router = APIRouter(prefix="/models", tags=["models"])


class VersionPublic(BaseModel):
    version: int
    state: str = Field(description="available, or missing when its folder is gone")
    promoted: bool
    created_at: datetime
    metrics: dict[str, Any]
    metadata: dict[str, Any]


class ModelSummary(BaseModel):
    name: str
    description: str
    promoted_version: int | None
    versions: list[int]


class ModelPublic(BaseModel):
    name: str
    description: str
    promoted_version: int | None
    versions: list[VersionPublic]


class SyncResult(BaseModel):
    changes: list[str] = Field(description="what was registered or promoted")
    model: ModelPublic


def _public(model: registry.ModelInfo) -> ModelPublic:
    return ModelPublic(
        name=model.name,
        description=model.description,
        promoted_version=model.promoted_version,
        versions=[
            VersionPublic(
                version=v.version,
                state=v.state,
                promoted=v.promoted,
                created_at=v.created_at,
                metrics=v.metrics,
                metadata=v.meta,
            )
            for v in model.versions
        ],
    )


@router.get("", summary="List models with their versions and the promoted one")
def list_models(session: SessionDep) -> list[ModelSummary]:
    return [
        ModelSummary(
            name=m.name,
            description=m.description,
            promoted_version=m.promoted_version,
            versions=[v.version for v in m.versions],
        )
        for m in registry.list_models(session)
    ]


@router.get("/{name}", summary="A model's versions with metadata and validation metrics")
def get_model(name: str, session: SessionDep) -> ModelPublic:
    return _public(registry.get_model(session, name))


@router.post(
    "/{name}/versions/{version}/promote",
    summary="Make a version the default of every overlay and job (no restart)",
)
def promote(name: str, version: Annotated[int, Path(ge=1)], session: SessionDep) -> ModelPublic:
    registry.promote(session, name, version)
    session.commit()
    return _public(registry.get_model(session, name))


@router.post(
    "/{name}/sync",
    summary="Register version folders that appeared on disk and ask Triton to load them",
)
async def sync(
    name: str, session: SessionDep, settings: SettingsDep, triton: TritonDep
) -> SyncResult:
    if name not in registry.model_names(settings):
        raise NotFound(
            f"no model {name!r} in the model repository", models=registry.model_names(settings)
        )

    def register() -> list[str]:
        changes = registry.sync_models(settings, session)
        session.commit()
        return changes

    changes = await run_in_threadpool(register)
    await registry.ensure_loaded(triton, name, settings)
    model = await run_in_threadpool(registry.get_model, session, name)
    return SyncResult(changes=changes, model=_public(model))
