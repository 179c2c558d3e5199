"""TileJSON 3.0.0 documents, one model for the imagery, overlay and buildings tilesets.

The official 3.0.0 schema requires `vector_layers` on every document, so raster
tilesets carry an empty list; `center` has an integer zoom that the tileset covers.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

# TileJSON points at tile URLs that change when a source or model version does; five
# minutes are long enough to spare clients the round trip, short enough to pick changes up.
CACHE_CONTROL = "public, max-age=300"


class VectorLayer(BaseModel):
    id: str
    description: str = ""
    fields: dict[str, str] = Field(description="attribute name -> Number, String or Boolean")
    minzoom: int | None = None
    maxzoom: int | None = None


class TileJSON(BaseModel):
    tilejson: str = "3.0.0"
    name: str
    description: str = ""
    version: str = Field("1.0.0", description="semver of the tileset")
    attribution: str | None = None
    scheme: str = "xyz"
    tiles: list[str]
    minzoom: int
    maxzoom: int
    bounds: list[float] = Field(description="west, south, east, north in degrees")
    center: list[float | int] = Field(description="longitude, latitude, zoom (an integer)")
    vector_layers: list[VectorLayer] = Field(
        default_factory=list, description="the layers of a vector tileset; empty for raster"
    )


def center(lon: float, lat: float, zoom: int, minzoom: int, maxzoom: int) -> list[float | int]:
    """[lon, lat, zoom] with the zoom an integer inside the tileset's zooms."""
    return [lon, lat, int(max(minzoom, min(zoom, maxzoom)))]
