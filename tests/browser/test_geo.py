"""The viewer's own geometry (web/js/geo.js), run in node and checked against the Python
libraries the server plans jobs with: the km² and tile count a user sees before
submitting must be the ones the server will count."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from pyproj import Geod
from shapely.geometry import Polygon, box, mapping
from supermercado import burntiles

from tilesight.settings import PROJECT_ROOT

NODE = shutil.which("node")
GEO_JS = PROJECT_ROOT / "web" / "js" / "geo.js"
SCRIPT = f"""
import {{ areaKm2, tileCount }} from {json.dumps(GEO_JS.as_uri())};
const cases = JSON.parse(process.argv[1]);
console.log(JSON.stringify(cases.map(([g, z]) => [areaKm2(g), tileCount(g, z).count])));
"""
CASES = [
    (box(39.2420, -6.0440, 39.2437, -6.0425), 19),  # a drawn rectangle in Tanzania
    (Polygon([(39.24, -6.05), (39.25, -6.045), (39.245, -6.04)]), 19),  # a slanted triangle
    (box(36.9, -1.32, 36.91, -1.31), 18),
    (Polygon([(0, 0), (0.01, 0), (0.01, 0.01), (0.005, 0.002), (0, 0.01)]), 17),  # concave
    (box(-84.4810, 33.6370, -84.4770, 33.6400), 20),  # northern hemisphere, west
]


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_area_and_tile_count_match_the_server() -> None:
    cases = [[mapping(p), z] for p, z in CASES]
    out = subprocess.run(
        [NODE, "--input-type=module", "-e", SCRIPT, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    geod = Geod(ellps="WGS84")
    for (polygon, zoom), (km2, tiles) in zip(CASES, json.loads(out.stdout), strict=True):
        expected_km2 = abs(geod.geometry_area_perimeter(polygon)[0]) / 1e6
        assert km2 == pytest.approx(expected_km2, rel=0.01), polygon.wkt
        feature = {"type": "Feature", "geometry": mapping(polygon), "properties": {}}
        assert tiles == len(burntiles.burn([feature], zoom)), polygon.wkt
