"""Imagery sources: register (path, URL, XYZ template, upload), list, inspect, delete."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.deps import SessionDep, SettingsDep, SourceCacheDep
from tilesight.imagery.register import check_text, new_source_id, register_file, register_source
from tilesight.imagery.sources import (
    SourceInfo,
    delete_source,
    get_source,
    list_sources,
)
from tilesight.imagery.upload import UploadSink

router = APIRouter(prefix="/sources", tags=["sources"])


class SourceCreate(BaseModel):
    uri: str = Field(
        description="a local path under a data root or an http(s) URL of a GeoTIFF/COG or "
        "of a STAC Item (.json, its COG asset is read), or an XYZ tile URL template with "
        "{z}, {x} and {y}",
        max_length=2000,
    )
    name: str = Field(min_length=1, max_length=200)
    attribution: str = Field("", max_length=1000, description="shown on the map")
    id: str | None = Field(None, description="the id to use in tile URLs; made from the name")
    minzoom: int | None = Field(None, ge=0, le=24, description="XYZ templates only")
    maxzoom: int | None = Field(None, ge=0, le=24, description="XYZ templates only")


class SourcePublic(BaseModel):
    id: str
    name: str
    kind: str
    attribution: str
    crs: str
    bounds: list[float]
    center: list[float]
    minzoom: int
    maxzoom: int
    native_zoom: int
    resolution_m: float | None
    band_count: int
    dtype: str
    rescale: list[float] | None
    tiles: str
    tilejson: str
    created_at: datetime | None = None
    acquired: str | None = Field(None, description="when the imagery was taken (STAC datetime)")


def _public(source: SourceInfo, request: Request) -> SourcePublic:
    base = str(request.base_url).rstrip("/")
    return SourcePublic(
        id=source.id,
        name=source.name,
        kind=source.kind,
        attribution=source.attribution,
        crs=source.crs,
        bounds=list(source.bounds),
        center=list(source.center),
        minzoom=source.minzoom,
        maxzoom=source.maxzoom,
        native_zoom=source.native_zoom,
        resolution_m=source.resolution_m,
        band_count=source.band_count,
        dtype=source.dtype,
        rescale=list(source.rescale) if source.rescale else None,
        tiles=f"{base}/tiles/{source.id}/{{z}}/{{x}}/{{y}}.png",
        tilejson=f"{base}/tiles/{source.id}/tilejson.json",
        created_at=datetime.fromisoformat(source.version) if source.version else None,
        acquired=source.acquired,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SourcePublic,
    summary="Register imagery from a path, an http(s) URL or an XYZ template",
)
def create_source(
    body: SourceCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    sources: SourceCacheDep,
) -> SourcePublic:
    source = register_source(
        settings,
        session,
        body.uri,
        name=body.name,
        attribution=body.attribution,
        source_id=body.id,
        minzoom=body.minzoom,
        maxzoom=body.maxzoom,
    )
    sources.forget(source.id)
    return _public(source, request)


@router.post(
    "/upload",
    status_code=status.HTTP_201_CREATED,
    response_model=SourcePublic,
    summary="Upload a GeoTIFF/COG or a zip of XYZ chips (multipart: file, name, attribution)",
)
async def upload_source(
    request: Request, session: SessionDep, settings: SettingsDep, sources: SourceCacheDep
) -> SourcePublic:
    tmp = settings.staging_dir / f"{uuid.uuid4().hex}.part"
    sink = UploadSink(
        request.headers.get("content-type", ""), tmp, "file", settings.upload_max_bytes
    )
    await sink.consume(request.stream())
    name = sink.fields.get("name") or sink.filename or "upload"

    def register() -> SourceInfo:
        try:
            check_text(**sink.fields, filename=sink.filename or "")
            sid = new_source_id(session, sink.fields.get("id") or None, name)
            return register_file(
                settings,
                session,
                tmp,
                name=name,
                attribution=sink.fields.get("attribution", ""),
                source_id=sid,
                original_uri=f"upload:{sink.filename}",
                label=(sink.filename or "the upload")[:200],
            )
        finally:
            tmp.unlink(missing_ok=True)

    source = await run_in_threadpool(register)
    sources.forget(source.id)
    return _public(source, request)


@router.get("", response_model=list[SourcePublic], summary="List the registered imagery sources")
def list_all(request: Request, session: SessionDep) -> list[SourcePublic]:
    return [_public(SourceInfo.from_row(row), request) for row in list_sources(session)]


@router.get("/{source_id}", response_model=SourcePublic, summary="One imagery source")
def get_one(source_id: str, request: Request, session: SessionDep) -> SourcePublic:
    return _public(get_source(session, source_id), request)


@router.delete(
    "/{source_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a source and the files Tilesight made for it",
)
def delete_one(
    source_id: str, session: SessionDep, settings: SettingsDep, sources: SourceCacheDep
) -> None:
    delete_source(settings, session, source_id)
    session.commit()
    sources.forget(source_id)
