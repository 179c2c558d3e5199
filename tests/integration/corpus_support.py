"""A corpus of broken uploads, built from the real demo data each session.

Each builder takes a real file (the Atlanta GeoTIFF, a Nairobi chip) and breaks it the
way a careless or hostile client would: truncated, a header that lies about its size,
a zip with a bad CRC, corrupt deflate, an unknown method, the encryption flag, a chip
that is a decompression bomb. Nothing binary is committed.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from tests.integration.imagery_support import ATLANTA, CHIP_X, CHIP_Y, NAIROBI

CHIP = NAIROBI / f"OAM-{CHIP_X}-{CHIP_Y}-21.png"
CHIP_NAME = f"21/{CHIP_X}/{CHIP_Y}.png"


def _geotiff(path: Path, width: int, height: int, **extra: object) -> Path:
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:3857",
        "transform": from_origin(0, 0, 1, 1),
        **extra,
    }
    with rasterio.open(path, "w", **profile) as out:
        if width * height <= 1 << 20:
            out.write(np.full((1, height, width), 7, np.uint8))
    return path


def _patch_tiff_size(data: bytes, size: int) -> bytes:
    """Rewrite ImageWidth/ImageLength of a little-endian classic TIFF's first IFD."""
    buf = bytearray(data)
    (ifd,) = struct.unpack_from("<I", buf, 4)
    (count,) = struct.unpack_from("<H", buf, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", buf, entry)
        if tag in (256, 257):
            if kind == 3:
                struct.pack_into("<H", buf, entry + 8, size)
            else:
                struct.pack_into("<I", buf, entry + 8, size)
    return bytes(buf)


def _png_claiming(width: int, height: int) -> bytes:
    """A real chip whose IHDR claims another size (with a valid chunk CRC)."""
    data = bytearray(_chip_png())
    ihdr = 8  # length(4) type(4) data(13) crc(4)
    struct.pack_into(">II", data, ihdr + 8, width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 8 + 13]))
    struct.pack_into(">I", data, ihdr + 8 + 13, crc)
    return bytes(data)


def _chip_png() -> bytes:
    with Image.open(CHIP) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, "PNG")
    return out.getvalue()


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def _patch_headers(data: bytes, offset_in_header: int, fmt: str, value: int) -> bytes:
    """Set a field in every local (PK\\3\\4) and central (PK\\1\\2) header."""
    buf = bytearray(data)
    for signature, field in ((b"PK\x03\x04", offset_in_header), (b"PK\x01\x02", None)):
        start = 0
        while (at := buf.find(signature, start)) >= 0:
            # local header: flags at 6, method at 8, crc at 14; central: each + 2
            where = at + (field if field is not None else offset_in_header + 2)
            struct.pack_into(fmt, buf, where, value)
            start = at + 4
    return bytes(buf)


def _corrupt_deflate() -> bytes:
    data = bytearray(_zip({CHIP_NAME: _chip_png()}))
    body = 30 + len(CHIP_NAME)  # the local header, then the compressed bytes
    data[body : body + 100] = b"\xff" * 100  # BTYPE 11: an invalid deflate block
    return bytes(data)


def build_corpus(folder: Path) -> dict[str, Path]:
    """Write the corpus under `folder`; returns file name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    atlanta = ATLANTA.read_bytes()
    small = _geotiff(folder / "_small.tif", 64, 64).read_bytes()
    chip = _chip_png()
    files: dict[str, Callable[[], bytes]] = {
        # GeoTIFFs
        "truncated-half.tif": lambda: atlanta[: len(atlanta) // 2],
        "truncated-header.tif": lambda: atlanta[:300],
        "truncated-ifd.tif": lambda: atlanta[:8] + b"\x00" * 8,
        "claims-65535.tif": lambda: _patch_tiff_size(small, 65535),
        "sparse-65536.tif": lambda: _geotiff(
            folder / "_sparse.tif",
            65536,
            65536,
            tiled=True,
            blockxsize=512,
            blockysize=512,
            compress="deflate",
            sparse_ok=True,
        ).read_bytes(),  # fmt: skip
        "no-crs.tif": lambda: _geotiff(folder / "_nocrs.tif", 64, 64, crs=None).read_bytes(),
        "empty.tif": lambda: b"",
        "text.tif": lambda: b"not a raster at all\n" * 50,
        "png-named-tif.tif": lambda: chip,
        "reversed.tif": lambda: atlanta[::-1][:65536],
        "vrt.tif": lambda: (
            b'<VRTDataset rasterXSize="1" rasterYSize="1"><VRTRasterBand dataType="Byte" '
            b'band="1"><SimpleSource><SourceFilename>/etc/passwd</SourceFilename>'
            b"</SimpleSource></VRTRasterBand></VRTDataset>"
        ),
        # zips of chips
        "bomb-png-20000.zip": lambda: _zip({CHIP_NAME: _png_claiming(20000, 20000)}),
        "bad-crc.zip": lambda: _patch_headers(
            _zip({CHIP_NAME: chip}, zipfile.ZIP_STORED), 14, "<I", 0xDEADBEEF
        ),
        "corrupt-deflate.zip": _corrupt_deflate,
        "unknown-method.zip": lambda: _patch_headers(_zip({CHIP_NAME: chip}), 8, "<H", 99),
        "encrypted-flag.zip": lambda: _patch_headers(_zip({CHIP_NAME: chip}), 6, "<H", 1),
        "truncated.zip": lambda: _zip({CHIP_NAME: chip})[:-60],
        "only-magic.zip": lambda: b"PK\x03\x04" + b"\x00" * 40,
        "spread-z7.zip": lambda: _zip({"7/0/0.png": chip, "7/127/127.png": chip}),
        "big-member.zip": lambda: _zip({CHIP_NAME: b"\x00" * (8 << 20)}),
        "wrong-size-chip.zip": lambda: _zip({CHIP_NAME: _png_claiming(128, 128)}),
        "text-chip.zip": lambda: _zip({CHIP_NAME: b"hello"}),
        "truncated-chip.zip": lambda: _zip({CHIP_NAME: chip[: len(chip) // 2]}),
        "traversal.zip": lambda: _zip({"../../21/1/1.png": chip}),
        "no-chips.zip": lambda: _zip({"notes.txt": b"no chips here"}),
    }
    built = {}
    for name, make in files.items():
        path = folder / name
        path.write_bytes(make())
        built[name] = path
    for scratch in folder.glob("_*.tif"):
        scratch.unlink()
    return built


BOUNDARY = "tilesightcorpus"


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body from (field, filename, data) parts."""
    out = bytearray()
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def malformed_bodies() -> dict[str, tuple[str, bytes]]:
    """Broken multipart requests: name -> (content-type, body)."""
    chip = _chip_png()
    good = multipart([("name", None, b"x"), ("file", "a.png", chip)])
    long_boundary = "b" * 300
    return {
        "boundary-300": (
            f"multipart/form-data; boundary={long_boundary}",
            multipart([("file", "a.tif", b"x")], long_boundary),
        ),
        "part-header-10k": (
            f"multipart/form-data; boundary={BOUNDARY}",
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="a.tif"\r\nX-Padding: {"p" * 10240}\r\n\r\n'
            f"xx\r\n--{BOUNDARY}--\r\n".encode(),
        ),
        "garbage": (f"multipart/form-data; boundary={BOUNDARY}", bytes(range(256)) * 40),
        "unterminated": (f"multipart/form-data; boundary={BOUNDARY}", good[: -len(BOUNDARY) - 20]),
        "no-boundary": ("multipart/form-data", good),
        "not-multipart": ("application/octet-stream", chip),
    }
