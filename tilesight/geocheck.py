"""GeoJSON positions checked before shapely, GDAL or a JSON encoder sees them.

Python's JSON parser reads `NaN`, `Infinity` and `1e400` (as inf) and takes `true` for 1,
and none of these fails where it enters: shapely builds a geometry with NaN bounds, a
label file is written with `NaN` in it, and the error that finally names such a value
cannot be encoded as JSON. So every position is walked once, up front, and the first bad
one is named by its place in the request (`aoi.coordinates[0][3][1]`).
"""

from __future__ import annotations

import math
from typing import Any

from tilesight.errors import Unprocessable

# how deep `coordinates` nest for each geometry type (a position is depth 0)
DEPTHS = {
    "Point": 0,
    "MultiPoint": 1,
    "LineString": 1,
    "MultiLineString": 2,
    "Polygon": 2,
    "MultiPolygon": 3,
}


def check_geojson(obj: Any, where: str, strict: bool = False) -> None:
    """Raise Unprocessable naming the first position in `obj` that is not two or three
    finite numbers. Objects that are not geometries, features or collections are left to
    the caller's own checks (which say what type was expected), unless `strict`: then
    the structure must be GeoJSON too (features a list of objects, known geometry types,
    properties an object) and positions lie within longitude and latitude, as for a
    document that is written to a file for GDAL to read."""
    if not isinstance(obj, dict):
        if strict:
            raise Unprocessable(f"{where} must be a GeoJSON object", field=where)
        return
    kind = obj.get("type")
    if kind == "Feature":
        geometry = obj.get("geometry")
        if strict and not isinstance(obj.get("properties") or {}, dict):
            raise Unprocessable(f"{where}.properties must be an object or null", field=where)
        if geometry is not None or not strict:
            check_geojson(geometry, f"{where}.geometry", strict)
    elif kind == "FeatureCollection":
        features = obj.get("features")
        if strict and not isinstance(features, list | tuple):
            raise Unprocessable(f"{where}.features must be an array", field=f"{where}.features")
        if isinstance(features, list | tuple):
            for i, feature in enumerate(features):
                if strict and not (isinstance(feature, dict) and feature.get("type") == "Feature"):
                    raise Unprocessable(
                        f"{where}.features[{i}] must be a Feature", field=f"{where}.features[{i}]"
                    )
                check_geojson(feature, f"{where}.features[{i}]", strict)
    elif kind == "GeometryCollection":
        geometries = obj.get("geometries")
        if strict and not isinstance(geometries, list | tuple):
            raise Unprocessable(f"{where}.geometries must be an array", field=where)
        if isinstance(geometries, list | tuple):
            for i, geometry in enumerate(geometries):
                check_geojson(geometry, f"{where}.geometries[{i}]", strict)
    elif kind in DEPTHS and "coordinates" in obj:
        _check_nested(obj["coordinates"], DEPTHS[kind], f"{where}.coordinates", strict)
    elif strict:
        raise Unprocessable(
            f"{where} must be a GeoJSON Feature, FeatureCollection or geometry with coordinates",
            field=f"{where}.type",
        )


def _check_nested(value: Any, depth: int, where: str, degrees: bool) -> None:
    if depth == 0:
        _check_position(value, where, degrees)
        return
    if not isinstance(value, list | tuple):
        raise Unprocessable(f"{where} must be an array", field=where)
    for i, item in enumerate(value):
        _check_nested(item, depth - 1, f"{where}[{i}]", degrees)


def _check_position(value: Any, where: str, degrees: bool = False) -> None:
    if not isinstance(value, list | tuple) or not 2 <= len(value) <= 3:
        raise Unprocessable(
            f"{where} must be a position: [longitude, latitude] in degrees", field=where
        )
    for i, number in enumerate(value):
        # bool is an int to Python, and `true` is no coordinate
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise Unprocessable(
                f"{where}[{i}] must be a number, not {type(number).__name__}",
                field=f"{where}[{i}]",
            )
        try:
            finite = math.isfinite(number)
        except OverflowError:  # an integer beyond any float
            finite = False
        if not finite:
            raise Unprocessable(
                f"{where}[{i}] must be a finite number (NaN, Infinity and overflowing "
                "values like 1e400 are not coordinates)",
                field=f"{where}[{i}]",
            )
    if degrees and not (-180 <= value[0] <= 180 and -90 <= value[1] <= 90):
        raise Unprocessable(
            f"{where} must be [longitude, latitude] in degrees (EPSG:4326, RFC 7946)",
            field=where,
        )
