"""Prediction tiles (the building overlay, 256 px and @2x) and their TileJSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.conditional import etag, json_with_etag, not_modified
from api.deps import PredictContextDep, ScaleDep, SessionDep, SettingsDep, SourceCacheDep
from api.tilejson import CACHE_CONTROL as TILEJSON_CACHE
from api.tilejson import TileJSON, center
from tilesight import overlay, predict, registry
from tilesight.imagery.reader import check_tile

router = APIRouter(prefix="/predictions", tags=["predictions"])

# a pinned version never changes; the promoted one can, so its tiles revalidate sooner
CACHE_PINNED = "public, max-age=86400, immutable"
CACHE_PROMOTED = "public, max-age=60"


@dataclass
class StyleParams:
    """How the probabilities are drawn: parsed once, shared by tiles and TileJSON."""

    mode: Annotated[
        overlay.Mode,
        Query(description="overlay (RGBA colour), mask (binary grey) or probability (grey)"),
    ] = "overlay"
    threshold: Annotated[
        float | None,
        Query(ge=0, le=1, description="probability drawn as a hit; default: the model's own"),
    ] = None
    colormap: Annotated[
        str | None,
        Query(
            description="class colours by default; a ramp (viridis, magma, inferno, heat) "
            "or one colour like #00ff88",
            # hex digits only: int("-1", 16) would take `#-1-1-1` for a colour
            pattern=r"^([a-z]{1,32}|#?[0-9A-Fa-f]{3}|#?[0-9A-Fa-f]{6})$",
        ),
    ] = None
    opacity: Annotated[float, Query(ge=0, le=1, description="alpha of a sure hit")] = 0.6

    def style(self) -> overlay.Style:
        return overlay.Style(self.mode, self.threshold, self.colormap, self.opacity)

    def query(self) -> dict[str, Any]:
        """The parameters that differ from the defaults, for tile URLs."""
        defaults = overlay.Style().as_dict()
        return {k: v for k, v in self.style().as_dict().items() if v != defaults[k]}


def resolve_layer(
    session: SessionDep,
    settings: SettingsDep,
    sources: SourceCacheDep,
    model: str,
    source: str,
    version: Annotated[
        int | None, Query(ge=1, description="model version; default: the promoted one")
    ] = None,
) -> predict.Layer:
    """One model version over one source, resolved once per request."""
    info = sources.get(session, source)
    resolved = registry.resolve_version(session, model, version)
    metadata = registry.model_metadata(settings, model, resolved)
    return predict.Layer(model, resolved, metadata, info, pinned=version is not None)


LayerDep = Annotated[predict.Layer, Depends(resolve_layer)]
StyleDep = Annotated[StyleParams, Depends()]
Z = Annotated[int, Path(ge=0, le=30)]
XY = Annotated[int, Path(ge=0)]


TILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}},
    304: {"description": "not modified (If-None-Match)"},
    404: {
        "description": "unknown model, version or source; a tile outside the imagery; or a "
        "zoom below the model's reach (header X-Predictions-Minzoom says where they start)"
    },
    503: {"description": "Triton is down or the model is loading; retry after Retry-After"},
}


# the decorator nearest the function registers first: @2x before the path it would match
@router.get(
    "/{model}/{source}/{z}/{x}/{y}.png",
    response_class=Response,
    responses=TILE_RESPONSES,
    summary="A prediction overlay tile: the model's buildings over one imagery tile",
)
@router.get(
    "/{model}/{source}/{z}/{x}/{y}@2x.png",
    response_class=Response,
    responses=TILE_RESPONSES,
    summary="A 512 px prediction overlay tile (for high-DPI screens)",
)
async def tile(
    z: Z,
    x: XY,
    y: XY,
    request: Request,
    ctx: PredictContextDep,
    layer: LayerDep,
    style_params: StyleDep,
    scale: ScaleDep,
) -> Response:
    style = style_params.style()
    minzoom = predict.min_zoom(layer.meta)
    predict.check_zoom(layer.model, layer.meta, z)
    check_tile(layer.source, x, y, z)
    key = (
        f"{layer.model}|v{layer.version}|{layer.source.id}|{layer.source.version}|"
        f"{z}/{x}/{y}@{scale}|{sorted(style.as_dict().items())}"
    )
    tag = etag(key, prefix=f"v{layer.version}-")
    headers = {
        "ETag": tag,
        "Cache-Control": CACHE_PINNED if layer.pinned else CACHE_PROMOTED,
        "X-Model-Version": str(layer.version),
        predict.MINZOOM_HEADER: str(minzoom),
    }
    if not_modified(request, tag):
        return Response(status_code=304, headers=headers)
    run = predict.predict_tile_2x if scale == 2 else predict.predict_tile
    probs = await run(ctx, layer.model, layer.version, layer.source, x, y, z)
    threshold = (
        style.threshold if style.threshold is not None else float(layer.meta.get("threshold", 0.5))
    )
    classes = layer.meta["classes"]
    content = await run_in_threadpool(
        lambda: overlay.to_png(overlay.render(probs, classes, style, threshold))
    )
    return Response(content, media_type="image/png", headers=headers)


@router.get(
    "/{model}/{source}/tilejson.json",
    response_model=TileJSON,
    response_model_exclude_none=True,
    summary="TileJSON 3.0 for a model's overlay over a source",
)
def tilejson(
    request: Request,
    layer: LayerDep,
    style: StyleDep,
    tile_scale: Annotated[int, Query(ge=1, le=2)] = 1,
) -> Response:
    source, meta = layer.source, layer.meta
    query = style.query()
    if layer.pinned:
        query["version"] = layer.version
    suffix = "@2x" if tile_scale == 2 else ""
    base = str(request.base_url).rstrip("/")
    url = f"{base}/predictions/{layer.model}/{source.id}/{{z}}/{{x}}/{{y}}{suffix}.png"
    if query:
        url += "?" + urlencode(query)
    minzoom = max(source.minzoom, predict.min_zoom(meta))
    maxzoom = max(source.maxzoom, minzoom)
    lon, lat = source.center
    # the imagery's credit is on the imagery layer; the overlay credits its training data
    shown = source.attribution.strip()
    credit = "; ".join(
        c for c in training_credits(meta) if not shown or (c not in shown and shown not in c)
    )
    document = TileJSON(
        name=f"{layer.model} v{layer.version} over {source.name}",
        description=f"{layer.model} predictions (native zoom {meta['zoom']})",
        version=f"{layer.version}.0.0",
        attribution=credit or None,
        tiles=[url],
        minzoom=minzoom,
        maxzoom=maxzoom,
        bounds=list(source.bounds),
        center=center(lon, lat, int(meta["zoom"]), minzoom, maxzoom),
    )
    cache = TILEJSON_CACHE if layer.pinned else CACHE_PROMOTED
    return json_with_etag(request, document, cache)


def training_credits(meta: dict[str, Any]) -> list[str]:
    """Each place's credit once, in training order. The caller leaves out a credit that
    overlaps the imagery layer's own (trained on this very imagery, or the same
    provider named shorter), so a map shows it once."""
    training = meta.get("training_data")
    if not isinstance(training, dict):
        return []
    per_source = [p.get("attribution", "") for p in training.get("per_source") or []]
    credits = [c for c in per_source if c] or [training.get("attribution", "")]
    return [c for i, c in enumerate(credits) if c and c not in credits[:i]]
