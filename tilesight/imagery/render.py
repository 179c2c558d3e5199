"""Encoding tiles for the web: PNG (with transparency), JPEG, WebP.

Pillow encodes straight from the numpy buffers; PNG uses a low zlib level because at
256 px the encoder, not the read, is the largest part of a warm tile request, and the
size grows only a little (measured in bench/imagery.py).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tilesight.errors import InvalidInput
from tilesight.imagery.reader import TileArray

MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
PNG_COMPRESS_LEVEL = 1
JPEG_QUALITY = 85
WEBP_QUALITY = 80


def encode(tile: TileArray, fmt: str) -> bytes:
    """Bytes of `tile` in `fmt`; masked pixels are transparent where the format allows."""
    if fmt not in MEDIA_TYPES:
        raise InvalidInput(f"unsupported tile format {fmt!r}", formats=sorted(MEDIA_TYPES))
    rgb = np.ascontiguousarray(tile.data.transpose(1, 2, 0))
    opaque = bool(tile.mask.all())
    out = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        if not opaque:
            rgb = np.where(tile.mask[..., None], rgb, 0).astype(np.uint8)
        Image.fromarray(rgb).save(out, "JPEG", quality=JPEG_QUALITY)
        return out.getvalue()
    if opaque:
        image = Image.fromarray(rgb)
    else:
        alpha = tile.mask.astype(np.uint8) * 255
        image = Image.fromarray(np.dstack([rgb, alpha]))
    if fmt == "png":
        image.save(out, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(out, "WEBP", quality=WEBP_QUALITY, method=0)
    return out.getvalue()


def empty_tile(fmt: str, size: int) -> bytes:
    """A fully transparent tile (black for JPEG), for `?empty=transparent`."""
    blank = TileArray(np.zeros((3, size, size), np.uint8), np.zeros((size, size), bool))
    return encode(blank, fmt)
