"""A job's buildings as OSM XML for JOSM: new objects only, never uploaded by us.

Every object has a negative id, which JOSM reads as "new, not yet in OSM". Each building
is a closed way tagged `building=yes` with a `source` naming Tilesight and the model
version; a building with holes (or in several parts) is a multipolygon relation whose
ways carry no tags. Raw model output is marked `upload="never"` (JOSM refuses to upload
it: unreviewed machine output must not reach OSM); a reviewed export is `upload="false"`,
so JOSM warns before an upload and the mapper, having checked it, decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import quoteattr

import geopandas as gpd
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry


class _Ids:
    """One shared negative counter, so no two objects in the file share an id."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last -= 1
        return self.last


def source_tag(model: str, version: int, review: str | None) -> str:
    base = f"Tilesight {model} v{version}"
    if review == "added":
        return f"Tilesight review (drawn by a reviewer on {model} v{version} output)"
    return f"{base}, reviewed ({review})" if review else base


def _ring(coords: list[tuple[float, float]], ids: _Ids, nodes: list[str]) -> tuple[int, str]:
    """A closed way over one ring: its nodes appended to `nodes`, the way returned."""
    refs = []
    for lon, lat in coords[:-1]:  # the closing vertex repeats the first
        nid = ids.next()
        nodes.append(f'  <node id="{nid}" lat="{lat:.7f}" lon="{lon:.7f}"/>')
        refs.append(nid)
    refs.append(refs[0])
    wid = ids.next()
    body = "".join(f'\n    <nd ref="{r}"/>' for r in refs)
    return wid, f'  <way id="{wid}">{body}'


def _tags(tags: dict[str, str]) -> str:
    return "".join(f"\n    <tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in tags.items())


def _building(geom: BaseGeometry, tags: dict[str, str], ids: _Ids) -> Iterator[tuple[str, str]]:
    """(kind, xml) pieces for one building: nodes first, then ways, then a relation."""
    polygons = list(geom.geoms) if isinstance(geom, MultiPolygon) else [geom]
    polygons = [p for p in polygons if isinstance(p, Polygon) and not p.is_empty]
    if not polygons:
        return
    nodes: list[str] = []
    if len(polygons) == 1 and not polygons[0].interiors:
        _, way = _ring(list(polygons[0].exterior.coords), ids, nodes)
        yield from (("node", n) for n in nodes)
        yield "way", way + _tags(tags) + "\n  </way>"
        return
    members = []
    ways = []
    for polygon in polygons:
        rings = [("outer", polygon.exterior), *(("inner", r) for r in polygon.interiors)]
        for role, ring in rings:
            wid, way = _ring(list(ring.coords), ids, nodes)
            ways.append(way + "\n  </way>")
            members.append(f'\n    <member type="way" ref="{wid}" role="{role}"/>')
    yield from (("node", n) for n in nodes)
    yield from (("way", w) for w in ways)
    relation_tags = _tags({"type": "multipolygon", **tags})
    yield (
        "relation",
        f'  <relation id="{ids.next()}">{"".join(members)}{relation_tags}\n  </relation>',
    )


def write_osm_xml(frame: gpd.GeoDataFrame, path: Path) -> None:
    """Write `frame` (EPSG:4326, with model, version and maybe review columns) to `path`."""
    reviewed = "review" in frame.columns
    ids = _Ids()
    pieces: dict[str, list[str]] = {"node": [], "way": [], "relation": []}
    for row in frame.itertuples():
        review = getattr(row, "review", None) if reviewed else None
        tags = {"building": "yes", "source": source_tag(row.model, int(row.version), review)}
        for kind, xml in _building(row.geometry, tags, ids):
            pieces[kind].append(xml)
    upload = "false" if reviewed else "never"
    with path.open("w", encoding="utf-8") as out:
        out.write("<?xml version='1.0' encoding='UTF-8'?>\n")
        out.write(f'<osm version="0.6" generator="Tilesight" upload="{upload}">\n')
        for kind in ("node", "way", "relation"):  # OSM XML orders nodes, ways, relations
            for xml in pieces[kind]:
                out.write(xml + "\n")
        out.write("</osm>\n")
