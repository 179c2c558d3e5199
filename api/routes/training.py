"""Training runs: submit (validated before any GPU time), follow, cancel."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, Field

from api.access import principal_of
from api.deps import CeleryDep, SessionDep, SettingsDep
from tilesight.training.service import (
    cancel_run,
    create_run,
    enqueue_run,
    get_run,
    list_runs,
)
from tilesight.training.spec import RunRequest

router = APIRouter(prefix="/training-runs", tags=["training"])


class RunCreate(RunRequest):
    """A training run: source and labels, and the hyperparameters of
    tilesight.training.spec (leave them out for the defaults of a run from scratch, or
    of a fine-tune when `init_from_version` is given)."""


class RunPublic(BaseModel):
    id: uuid.UUID
    url: str
    model: str
    source: str | None
    state: str
    epoch: int
    epochs: int
    progress: float = Field(description="percent")
    history: list[dict[str, Any]] = Field(description="validation metrics per epoch")
    validation: dict[str, Any] | None = Field(
        None, description="how the run was validated and what chose its epoch (once done)"
    )
    result_version: int | None
    error: str | None
    params: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> RunPublic:
        return cls(
            id=row.id,
            url=f"/training-runs/{row.id}",
            model=row.model_name,
            source=row.source_id,
            state=row.state,
            epoch=row.epoch,
            epochs=int(row.params.get("epochs", 0)),
            progress=row.progress,
            history=row.history or [],
            validation=row.params.get("validation"),
            result_version=row.result_version,
            error=row.error,
            params=row.params,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )


@router.post("", status_code=status.HTTP_202_ACCEPTED, summary="Start a training run")
def create(
    body: RunCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
) -> RunPublic:
    owner = principal_of(request).key_id  # the run is this key's, as a job would be
    with session.begin():
        row = create_run(settings, session, body, owner_key_id=owner)
    enqueue_run(session, celery, row)
    run = RunPublic.of(row)
    response.headers["Location"] = run.url
    return run


@router.get("", summary="List training runs, newest first")
def list_(
    request: Request,
    session: SessionDep,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> list[RunPublic]:
    runs = list_runs(session, limit, offset, viewer=principal_of(request))
    return [RunPublic.of(r) for r in runs]


@router.get("/{run_id}", summary="A training run: state, epoch, progress and metric curves")
def read(run_id: uuid.UUID, request: Request, session: SessionDep) -> RunPublic:
    return RunPublic.of(get_run(session, run_id, principal_of(request)))


@router.post("/{run_id}/cancel", summary="Cancel a training run")
def cancel(run_id: uuid.UUID, request: Request, session: SessionDep) -> RunPublic:
    with session.begin():
        row = cancel_run(session, run_id, principal_of(request))
    return RunPublic.of(row)
