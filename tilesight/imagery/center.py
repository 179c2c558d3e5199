"""Where a source's imagery is: a point on real pixels, for TileJSON `center` and the viewer.

The middle of the bounds is no good for chip mosaics (clusters of chips with empty
gaps between them) nor for a scene with a nodata collar: a client that opens there sees
nothing. The valid pixel nearest the middle is found on a decimated mask (overviews,
cheap) and then refined on the full-resolution mask around it, so the point lies on a
pixel that tiles at every zoom show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from tilesight.imagery.rasters import open_geotiff

OVERVIEW_PX = 512  # longest side of the decimated mask


def data_center(path: Path) -> tuple[float, float] | None:
    """Longitude, latitude of the valid pixel nearest the raster's middle; None if none."""
    with open_geotiff(path) as src:
        scale = max(src.width, src.height) / OVERVIEW_PX
        scale = max(scale, 1.0)
        shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        coarse = src.dataset_mask(out_shape=shape)
        hit = _nearest_valid(coarse, (shape[0] - 1) / 2, (shape[1] - 1) / 2)
        if hit is None:
            return None
        row, col = (hit[0] + 0.5) * src.height / shape[0], (hit[1] + 0.5) * src.width / shape[1]
        row, col = _refine(src, row, col, scale)
        x, y = src.transform * (col + 0.5, row + 0.5)
        lons, lats = transform_points(src.crs, "EPSG:4326", [x], [y])
        return round(float(lons[0]), 7), round(float(lats[0]), 7)


def _refine(src: rasterio.DatasetReader, row: float, col: float, scale: float) -> tuple[int, int]:
    """The full-resolution valid pixel nearest (row, col), looked for in a small window."""
    half = int(np.ceil(scale)) * 2
    top = int(min(max(row - half, 0), max(src.height - 1, 0)))
    left = int(min(max(col - half, 0), max(src.width - 1, 0)))
    window = Window(left, top, min(2 * half, src.width - left), min(2 * half, src.height - top))
    fine = src.dataset_mask(window=window)
    hit = _nearest_valid(fine, row - top, col - left)
    if hit is None:  # the coarse pixel was a resampling artefact: keep it
        return int(row), int(col)
    return top + hit[0], left + hit[1]


def _nearest_valid(mask: np.ndarray, row: float, col: float) -> tuple[int, int] | None:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    best = int(np.argmin((rows - row) ** 2 + (cols - col) ** 2))
    return int(rows[best]), int(cols[best])
