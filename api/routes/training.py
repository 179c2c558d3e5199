"""Training runs: submit (validated before any GPU time), follow, cancel."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from api.access import principal_of
from api.deps import CeleryDep, SessionDep, SettingsDep
from tilesight.training_runs import RunRequest, cancel_run, create_run, get_run, list_runs

router = APIRouter(prefix="/training-runs", tags=["training"])

ClassName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
ClassWeight = Annotated[float, Field(ge=0, le=1000)]


class RunCreate(BaseModel):
    model: str = Field("buildings", pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    source: str = Field(description="id of a registered 8-bit RGB imagery source")
    labels_path: str | None = Field(
        None,
        description="under a data root: footprints or class polygons (GeoJSON, OSM extract), "
        "or with `classes` a single-band raster of class values (.tif, any CRS)",
    )
    labels: dict[str, Any] | None = Field(None, description="or the GeoJSON inline")
    epochs: int = Field(20, ge=1, le=1000)
    batch_size: int = Field(8, ge=1, le=512)
    lr: float = Field(2e-3, gt=0, lt=1)
    width: int = Field(8, ge=4, le=128, description="U-Net channels at full resolution")
    depth: int = Field(4, ge=1, le=6)
    zoom: int = Field(19, ge=12, le=22, description="the model's native zoom")
    buffer: int = Field(32, ge=0, le=128, description="context pixels each side")
    border: bool = Field(False, description="add a border class between touching buildings")
    init_from_version: int | None = Field(None, ge=1, description="fine-tune from this version")
    freeze_encoder_epochs: int = Field(0, ge=0, le=1000)
    patience: int = Field(10, ge=1, le=1000)
    max_steps_per_epoch: int | None = Field(None, ge=1, le=100_000)
    classes: list[ClassName] = Field(
        default_factory=list,
        min_length=2,
        max_length=32,
        description="multi-class segmentation (land cover...): unique class names, the "
        "background first (pixels no polygon covers, raster value 0); leave out for buildings",
        examples=[["background", "water", "trees", "grass", "impervious"]],
    )
    class_property: str = Field(
        "class", min_length=1, max_length=64, description="the polygon property naming its class"
    )
    class_weights: list[ClassWeight] | None = Field(
        None,
        min_length=2,
        max_length=32,
        description="loss weight per class, in the order of `classes`, against imbalance",
    )
    ignore_value: int | None = Field(
        None, ge=0, le=255, description="the label raster's value for unlabelled pixels"
    )

    @field_validator("labels_path")
    @classmethod
    def _a_path_the_os_can_take(cls, value: str | None) -> str | None:
        """What no file system accepts is refused here, by name, not as an OSError later."""
        if value is None:
            return value
        if "\x00" in value:
            raise ValueError("must not hold a NUL byte")
        if len(value.encode("utf-8", "surrogatepass")) > 4096:
            raise ValueError("must be at most 4096 bytes")
        if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in value.split("/")):
            raise ValueError("each folder or file name in it must be at most 255 bytes")
        return value

    @model_validator(mode="after")
    def _one_label_source(self) -> RunCreate:
        if (self.labels is None) == (self.labels_path is None):
            raise ValueError("give the footprints either inline as `labels` or as `labels_path`")
        return self


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
        row = create_run(settings, session, RunRequest(**body.model_dump()), owner_key_id=owner)
    celery.send_task("tilesight.training.run", args=[str(row.id)], queue="gpu", routing_key="gpu")
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
