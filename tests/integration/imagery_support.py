"""Helpers for the imagery tests: a local HTTP server (the "remote" side) and pixel reads.

Only what lies outside the machine is faked: a remote file server and a remote XYZ tile
server are a real HTTP server on 127.0.0.1, which the test settings allow-list.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import mercantile
import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.vrt import WarpedVRT

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
ATLANTA = DEMO / "atlanta-spacenet" / "sample_geotiff.tif"
NAIROBI = DEMO / "buildings" / "nairobi"
# A 2x4 block of z21 chips from the Nairobi sample, and the z20 tile over its left half.
CHIP_X, CHIP_Y = 1263512, 1056200


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@contextmanager
def http_server(root: Path) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 (a free port); yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def chip_names(count_x: int = 2, count_y: int = 4) -> list[tuple[int, int, Path]]:
    return [
        (x, y, NAIROBI / f"OAM-{x}-{y}-21.png")
        for x in range(CHIP_X, CHIP_X + count_x)
        for y in range(CHIP_Y, CHIP_Y + count_y)
    ]


def chip_rgb(path: Path) -> np.ndarray:
    """The original chip's pixels, [H, W, 3]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def open_png(response: httpx.Response) -> np.ndarray:
    """The pixels of an image response, [H, W, C]."""
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(response.content)) as image:
        image.load()
        return np.asarray(image)


def warped_tile(path: Path, x: int, y: int, z: int, size: int = 256) -> np.ndarray:
    """A direct rasterio read of tile x/y/z of `path`, warped to Web Mercator: [bands, H, W]."""
    bounds = mercantile.xy_bounds(x, y, z)
    grid = from_bounds(*bounds, size, size)
    with (
        rasterio.open(path) as src,
        WarpedVRT(
            src, crs="EPSG:3857", transform=grid, width=size, height=size,
            resampling=Resampling.nearest,
        ) as vrt,
    ):  # fmt: skip
        return vrt.read()
