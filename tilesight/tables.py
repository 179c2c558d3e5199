"""The database schema as SQLAlchemy 2 models; Alembic migrations are written from these.

Geometries are stored in EPSG:4326 because that is what GeoJSON, MVT (after
ST_Transform) and every client speak; areas are computed on the geography type
or in an equal-area projection at write time and stored, so listing is cheap.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from geoalchemy2 import Geometry
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ApiKey(Base):
    """An API key; only a hash of the secret is kept (see the security issue)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # created through the API while keys were off, so by anyone who could reach it
    minted_anonymously: Mapped[bool] = mapped_column(Boolean, default=False)


class Source(Base):
    """A registered imagery source: a COG on disk, or an XYZ URL template."""

    __tablename__ = "sources"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # cog | chips | xyz
    uri: Mapped[str] = mapped_column(Text)  # what tiles are read from
    original_uri: Mapped[str] = mapped_column(Text)  # what the user gave
    attribution: Mapped[str] = mapped_column(Text, default="")
    crs: Mapped[str] = mapped_column(String(64), default="")
    bounds: Mapped[list[Any]] = mapped_column(JSON)  # [west, south, east, north], EPSG:4326
    footprint = mapped_column(Geometry("POLYGON", srid=4326, spatial_index=True))
    resolution_m: Mapped[float | None] = mapped_column(Float)
    minzoom: Mapped[int] = mapped_column(Integer)
    maxzoom: Mapped[int] = mapped_column(Integer)
    band_count: Mapped[int] = mapped_column(Integer, default=3)
    dtype: Mapped[str] = mapped_column(String(16), default="uint8")
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    owner_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))


class Model(Base):
    """A named model in the Triton repository; one of its versions is promoted."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    promoted_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="available")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    training_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    model_name: Mapped[str] = mapped_column(String(64))
    source_id: Mapped[str | None] = mapped_column(ForeignKey("sources.id", ondelete="SET NULL"))
    labels_path: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    history: Mapped[list[Any]] = mapped_column(JSON, default=list)  # metrics per epoch
    error: Mapped[str | None] = mapped_column(Text)
    result_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    owner_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))


class Job(Base):
    """An area job: an AOI cut into chunks of tiles, each inferred and vectorised."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[int] = mapped_column(Integer)
    aoi = mapped_column(Geometry("MULTIPOLYGON", srid=4326), nullable=False)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    zoom: Mapped[int] = mapped_column(Integer)
    tiles_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    area_km2: Mapped[float] = mapped_column(Float, default=0.0)
    buildings_count: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    owner_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))


class JobChunk(Base):
    __tablename__ = "job_chunks"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    tiles: Mapped[list[Any]] = mapped_column(JSON)  # [[x, y, z], ...]
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Building(Base):
    """A predicted building footprint; (job_id, chunk_index) makes chunk writes idempotent."""

    __tablename__ = "buildings"
    __table_args__ = (Index("ix_buildings_job_chunk", "job_id", "chunk_index"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    chunk_index: Mapped[int] = mapped_column(Integer)
    geom = mapped_column(Geometry("GEOMETRY", srid=4326, spatial_index=True), nullable=False)
    area_m2: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[int] = mapped_column(Integer)
    merged: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BuildingReview(Base):
    """A reviewer's verdict on one building of a job (correct, wrong, edited), or a building
    the model missed (added, no building_id). One row per building holds its current
    verdict; `version` counts its writes, so a stale write is refused (tilesight.jobs.reviews).
    Rows go with their job and with the building they judge (ON DELETE CASCADE)."""

    __tablename__ = "building_reviews"
    __table_args__ = (UniqueConstraint("job_id", "building_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    building_id: Mapped[int | None] = mapped_column(ForeignKey("buildings.id", ondelete="CASCADE"))
    verdict: Mapped[str] = mapped_column(String(16))  # correct | wrong | edited | added
    geom = mapped_column(Geometry("GEOMETRY", srid=4326))  # edited or added outline
    version: Mapped[int] = mapped_column(Integer, default=1)
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
