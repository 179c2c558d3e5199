"""Models and their versions: metadata, metrics, which one is promoted, and promotion."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep, TritonDep
from tilesight import registry
from tilesight.errors import NotFound
from tilesight.tables import Model, ModelVersion

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


def _versions(session: Session, name: str) -> list[ModelVersion]:
    query = select(ModelVersion).where(ModelVersion.model_name == name)
    return list(session.scalars(query.order_by(ModelVersion.version)))


def _public(session: Session, name: str) -> ModelPublic:
    row = session.get(Model, name)
    if row is None:
        names = list(session.scalars(select(Model.name).order_by(Model.name)))
        raise NotFound(f"no model named {name!r}", models=names)
    return ModelPublic(
        name=row.name,
        description=row.description,
        promoted_version=row.promoted_version,
        versions=[
            VersionPublic(
                version=v.version,
                state=v.state,
                promoted=v.version == row.promoted_version,
                created_at=v.created_at,
                metrics=dict(v.meta.get("metrics") or {}),
                metadata=v.meta,
            )
            for v in _versions(session, name)
        ],
    )


@router.get("", summary="List models with their versions and the promoted one")
def list_models(session: SessionDep) -> list[ModelSummary]:
    rows = session.scalars(select(Model).order_by(Model.name))
    return [
        ModelSummary(
            name=r.name,
            description=r.description,
            promoted_version=r.promoted_version,
            versions=[v.version for v in _versions(session, r.name)],
        )
        for r in rows
    ]


@router.get("/{name}", summary="A model's versions with metadata and validation metrics")
def get_model(name: str, session: SessionDep) -> ModelPublic:
    return _public(session, name)


@router.post(
    "/{name}/versions/{version}/promote",
    summary="Make a version the default of every overlay and job (no restart)",
)
def promote(name: str, version: Annotated[int, Path(ge=1)], session: SessionDep) -> ModelPublic:
    registry.promote(session, name, version)
    return _public(session, name)


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
    return SyncResult(changes=changes, model=await run_in_threadpool(_public, session, name))
