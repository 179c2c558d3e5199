"""Imagery tiles (XYZ, 256 px and @2x) and a TileJSON 3.0 document per source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.conditional import etag, json_with_etag, not_modified
from api.deps import ScaleDep, SessionDep, SettingsDep, SourceCacheDep
from api.tilejson import CACHE_CONTROL as TILEJSON_CACHE
from api.tilejson import TileJSON, center
from tilesight.errors import InvalidInput
from tilesight.imagery.reader import check_tile, read_tile, tile_problem
from tilesight.imagery.render import MEDIA_TYPES, empty_tile, encode

router = APIRouter(prefix="/tiles", tags=["tiles"])

CACHE_CONTROL = "public, max-age=3600"
TILE_SIZE = 256


@dataclass
class TileParams:
    """Query parameters shared by every tile route, parsed once."""

    bidx: Annotated[
        list[int] | None,
        Query(description="band numbers to show: one (grey) or three (RGB); repeat the key"),
    ] = None
    rescale: Annotated[
        str | None,
        Query(description="min,max of the values stretched to 0-255 (16-bit imagery)"),
    ] = None
    empty: Annotated[
        Literal["404", "transparent"],
        Query(description="outside the source: a 404 (default) or a transparent tile"),
    ] = "404"

    def __post_init__(self) -> None:
        self.stretch: tuple[float, float] | None = None
        if self.rescale is not None:
            try:
                low, high = (float(v) for v in self.rescale.split(","))
            except ValueError as exc:
                raise InvalidInput(
                    "rescale takes two numbers: min,max", rescale=self.rescale
                ) from exc
            if not high > low:
                raise InvalidInput("rescale needs min < max", rescale=self.rescale)
            self.stretch = (low, high)

    def as_dict(self) -> dict[str, Any]:
        """Keyword arguments for `read_tile`."""
        return {"bidx": self.bidx, "rescale": self.stretch}

    def query(self) -> str:
        parts = [f"bidx={b}" for b in self.bidx or []]
        if self.rescale:
            parts.append(f"rescale={self.rescale}")
        return "&".join(parts)


TileParamsDep = Annotated[TileParams, Depends()]


@router.get(
    "/{source_id}/tilejson.json",
    response_model=TileJSON,
    response_model_exclude_none=True,
    summary="TileJSON 3.0 for a source, for Leaflet, OpenLayers, MapLibre or QGIS",
)
async def tilejson(
    source_id: str,
    request: Request,
    session: SessionDep,
    sources: SourceCacheDep,
    params: TileParamsDep,
    tile_format: Annotated[str, Query(description="png, jpg or webp")] = "png",
    tile_scale: Annotated[int, Query(ge=1, le=2, description="2 for 512 px tiles")] = 1,
) -> Response:
    if tile_format not in MEDIA_TYPES:
        raise InvalidInput(f"unsupported tile format {tile_format!r}", formats=sorted(MEDIA_TYPES))
    source = await run_in_threadpool(sources.get, session, source_id)
    base = str(request.base_url).rstrip("/")
    suffix = "@2x" if tile_scale == 2 else ""
    query = params.query()
    url = f"{base}/tiles/{source.id}/{{z}}/{{x}}/{{y}}{suffix}.{tile_format}"
    lon, lat = source.center
    document = TileJSON(
        name=source.name,
        attribution=source.attribution or None,
        tiles=[f"{url}?{query}" if query else url],
        minzoom=source.minzoom,
        maxzoom=source.maxzoom,
        bounds=list(source.bounds),
        center=center(lon, lat, source.native_zoom - 2, source.minzoom, source.maxzoom),
    )
    return json_with_etag(request, document, TILEJSON_CACHE)


TILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {t: {} for t in sorted(set(MEDIA_TYPES.values()))}},
    304: {"description": "not modified (If-None-Match)"},
    404: {"description": "unknown source, or a tile outside its zooms/bounds"},
}


# the decorator nearest the function registers first: @2x before the path it would match
@router.get(
    "/{source_id}/{z}/{x}/{y}.{fmt}",
    response_class=Response,
    responses=TILE_RESPONSES,
    summary="A 256 px imagery tile (XYZ, Web Mercator)",
)
@router.get(
    "/{source_id}/{z}/{x}/{y}@2x.{fmt}",
    response_class=Response,
    responses=TILE_RESPONSES,
    summary="A 512 px imagery tile (for high-DPI screens)",
)
async def tile(
    source_id: str,
    z: int,
    x: int,
    y: int,
    fmt: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    sources: SourceCacheDep,
    scale: ScaleDep,
    params: TileParamsDep,
) -> Response:
    if fmt not in MEDIA_TYPES:
        raise InvalidInput(f"unsupported tile format {fmt!r}", formats=sorted(MEDIA_TYPES))
    source = await run_in_threadpool(sources.get, session, source_id)
    size = TILE_SIZE * scale
    if params.empty == "transparent" and tile_problem(source, x, y, z) is not None:
        content = empty_tile(fmt, size)
        return Response(
            content, media_type=MEDIA_TYPES[fmt], headers={"Cache-Control": CACHE_CONTROL}
        )
    check_tile(source, x, y, z)
    tag = etag(f"{source.id}|{source.version}|{z}/{x}/{y}@{scale}.{fmt}?{params.query()}")
    headers = {"ETag": tag, "Cache-Control": CACHE_CONTROL}
    if not_modified(request, tag):
        return Response(status_code=304, headers=headers)

    def work() -> bytes:
        tile = read_tile(source, x, y, z, settings=settings, tilesize=size, **params.as_dict())
        return encode(tile, fmt)

    content = await run_in_threadpool(work)
    return Response(content, media_type=MEDIA_TYPES[fmt], headers=headers)
