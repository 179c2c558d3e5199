"""Reviews of a job's buildings, the score of a version on the reviewed area, and a retrain
from them (tilesight.jobs.reviews and tilesight.jobs.retrain hold the rules)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.access import principal_of
from api.deps import CeleryDep, SessionDep, SettingsDep
from api.routes.jobs import ObjectScores
from api.routes.training import RunPublic
from tilesight.jobs import retrain, reviews
from tilesight.training.service import enqueue_run

router = APIRouter(prefix="/jobs", tags=["jobs"])

Verdict = Literal["correct", "wrong", "edited", "added"]


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    building_id: int | None = Field(None, description="a building of the job's GeoJSON")
    review_id: int | None = Field(None, description="an added building, to redraw or withdraw")
    verdict: Verdict
    geometry: dict[str, Any] | None = Field(
        None, description="GeoJSON Polygon (lon, lat) for edited and added buildings"
    )
    version: int = Field(
        0, ge=0, description="the review version you saw (0: unreviewed); stale -> 409"
    )


class ReviewBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reviews: list[ReviewIn] = Field(min_length=1, max_length=1000)


class ReviewPublic(BaseModel):
    id: int
    building_id: int | None
    verdict: str
    geometry: dict[str, Any] | None
    version: int
    by: str | None = Field(description="prefix of the API key that wrote it")
    updated_at: datetime


class ReviewPage(BaseModel):
    job: uuid.UUID
    counts: dict[str, int] = Field(description="per verdict, and reviewed/unreviewed buildings")
    reviews: list[ReviewPublic]
    links: dict[str, str]


class Score(ObjectScores):
    version: int
    job: uuid.UUID = Field(description="the job whose buildings were scored")
    area: list[float] = Field(description="the reviewed area: west, south, east, north")


class RetrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(None, ge=1, le=100, description="the fine-tune's default: 20")
    max_steps_per_epoch: int | None = Field(None, ge=1, le=100_000)
    seed: int | None = Field(None, ge=0)


def _page(job_id: uuid.UUID, found: reviews.ReviewSummary) -> ReviewPage:
    base = f"/jobs/{job_id}"
    return ReviewPage(
        job=job_id,
        counts=found.counts,
        reviews=[ReviewPublic(**r.__dict__) for r in found.reviews],
        links={
            "self": f"{base}/reviews",
            "buildings": f"{base}/buildings.geojson?reviewed=true",
            "osm": f"{base}/buildings.osm?reviewed=true",
            "gpkg": f"{base}/buildings.gpkg?reviewed=true",
            "retrain": f"{base}/retrain",
            "score": f"{base}/reviews/score",
        },
    )


@router.post("/{job_id}/reviews", summary="Save a batch of reviews, all or none (409 if stale)")
def save_reviews(
    job_id: uuid.UUID, body: ReviewBatch, request: Request, session: SessionDep
) -> ReviewPage:
    items = [reviews.ReviewInput(**r.model_dump()) for r in body.reviews]
    with session.begin():
        found = reviews.apply_reviews(session, job_id, items, principal_of(request))
    return _page(job_id, found)


@router.get("/{job_id}/reviews", summary="Every review of a job, with counts per verdict")
def read_reviews(job_id: uuid.UUID, request: Request, session: SessionDep) -> ReviewPage:
    return _page(job_id, reviews.list_reviews(session, job_id, principal_of(request)))


@router.get(
    "/{job_id}/reviews/score",
    summary="Object F1 of a model version on the reviewed area, against the reviewed buildings",
)
def score(
    job_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    version: Annotated[int, Query(ge=1, description="the model version to score")],
) -> Score:
    return Score(**retrain.score(session, job_id, version, principal_of(request)))


@router.post(
    "/{job_id}/retrain",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Fine-tune the job's model version on its reviewed area (never promoted by itself)",
)
def start_retrain(
    job_id: uuid.UUID,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    body: RetrainIn | None = None,
) -> RunPublic:
    options = (body or RetrainIn()).model_dump()
    with session.begin():
        row = retrain.create_retrain(session, settings, job_id, principal_of(request), **options)
    enqueue_run(session, celery, row)
    run = RunPublic.of(row)
    response.headers["Location"] = run.url
    return run
