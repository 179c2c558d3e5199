"""Building footprints from an OpenStreetMap extract (`.osm.pbf`, or `.osm` XML).

OSM keeps a building as a closed way or a multipolygon relation whose rings are lists of
node ids, with coordinates only on the nodes. pyosmium assembles both kinds into areas
(rings joined, holes kept), so an extract from Geofabrik or `osmium extract` stands in
for a GeoJSON of building=* without a conversion step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import osmium

from tilesight.errors import InvalidInput

log = logging.getLogger(__name__)


def read_osm(path: Path, keys: tuple[str, ...] = ("building",)) -> list[dict[str, Any]]:
    """Areas tagged with any of `keys`, as GeoJSON features in EPSG:4326.

    Properties are the area's OSM tags plus `osm_id` and `osm_type` ("way" or
    "relation"); `building=no` is kept here and dropped by `load_footprints`, which
    treats GeoJSON the same way. Areas osmium cannot assemble (self-crossing rings,
    members cut off at the extract's edge) are left out and counted in one warning:
    one broken building must not cost a whole training run.

    Cost: the file is read twice (relations first, then everything), and every node's
    location is held in memory (osmium's `flex_mem` index, about 16 bytes a node), so
    a city or region extract takes megabytes to a few hundred, but a large country
    takes gigabytes. Shrink such an extract to its buildings first:
    `osmium tags-filter in.osm.pbf a/building -o buildings.osm.pbf` keeps them and the
    nodes they use.
    """
    if not path.is_file():
        raise InvalidInput(f"labels {path} do not exist; give an .osm.pbf, .osm or GeoJSON file")
    processor = (
        osmium.FileProcessor(path)
        .with_locations("flex_mem")
        .with_areas(osmium.filter.KeyFilter(*keys))  # only tagged relations become areas
        .with_filter(osmium.filter.EntityFilter(osmium.osm.AREA))
        .with_filter(osmium.filter.KeyFilter(*keys))
    )
    factory = osmium.geom.GeoJSONFactory()
    features: list[dict[str, Any]] = []
    broken = 0
    try:
        for area in processor:
            feature = _feature(area, factory)
            if feature is None:
                broken += 1
            else:
                features.append(feature)
    except RuntimeError as exc:  # libosmium's error for unreadable or truncated files
        raise InvalidInput(
            f"labels {path} are not a readable OSM file ({exc}); give an .osm.pbf or "
            ".osm extract, or GeoJSON"
        ) from exc
    wanted = " or ".join(f"{k}=*" for k in keys)
    if broken:
        log.warning("%s: %d areas tagged %s could not be assembled", path, broken, wanted)
    if not features:
        raise InvalidInput(
            f"labels {path} hold no areas tagged {wanted}; give an extract that covers "
            "mapped buildings, with their nodes (e.g. cut with `osmium extract`)",
            path=str(path),
            broken_areas=broken,
        )
    return features


def _feature(area: Any, factory: osmium.geom.GeoJSONFactory) -> dict | None:
    try:
        geometry = json.loads(factory.create_multipolygon(area))
    except (RuntimeError, osmium.InvalidLocationError):  # no rings, or a node not in the file
        return None
    props: dict[str, Any] = {tag.k: tag.v for tag in area.tags}
    props["osm_id"] = area.orig_id()
    props["osm_type"] = "way" if area.from_way() else "relation"
    return {"type": "Feature", "geometry": geometry, "properties": props}
