"""Folders (or zips) of XYZ chips, mosaicked into one COG at the highest zoom present.

Training-data tools hand out imagery as loose 256 px Web-Mercator chips named by their
tile index. Serving them as one COG gives them overviews (so every zoom reads fast) and
one reading path with every other source. Gaps between chip clusters are left unwritten
in a sparse file and masked, so they come out transparent, not black.

Overviews still cost time in proportion to the mosaic's whole extent, gaps included, so
the extent is checked from the chip names before anything is read or unpacked: it must
fit the pixel budget, and be at most MAX_SPREAD chips' worth per chip, which keeps the
work in proportion to the chips sent (two corner chips of z7 would be a 32768² world).
"""

from __future__ import annotations

import lzma
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import mercantile
import numpy as np
import rasterio
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError
from rasterio.shutil import copy
from rasterio.transform import from_origin
from rasterio.windows import Window

from tilesight.errors import InvalidInput, TooLarge, Unprocessable
from tilesight.imagery.cog import Progress

CHIP_SIZE = 256
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"}
_FLAT_NAME = re.compile(r"^(?:.*-)?(\d+)-(\d+)-(\d+)$")  # *-{x}-{y}-{z}
WORLD_M = 2 * np.pi * 6378137.0
MAX_SPREAD = 16  # extent tiles per chip: Tanzania's 736 demo chips span 6.4x their area
MAX_CHIP_BYTES = 4 * 1024 * 1024  # one chip file; a 256 px RGBA TIFF is ~260 KB
DEFAULT_MAX_PIXELS = 2**29
# zipfile reads the whole central directory into ZipInfo objects (~0.5 KB each) on open;
# 2**29 px is 8192 chips at the top zoom, so this leaves room for lower zooms and extras
MAX_ZIP_ENTRIES = 50_000


@dataclass(frozen=True)
class Chip:
    x: int
    y: int
    z: int
    path: Path


def parse_chip(relative: PurePosixPath | Path) -> tuple[int, int, int] | None:
    """(x, y, z) from `{z}/{x}/{y}.ext` or `*-{x}-{y}-{z}.ext`; None for other files."""
    if relative.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    match = _FLAT_NAME.match(relative.stem)
    if match:
        x, y, z = (int(g) for g in match.groups())
    else:
        parts = relative.parts[-3:]
        if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
            return None
        if not relative.stem.isdigit():
            return None
        z, x, y = int(parts[0]), int(parts[1]), int(relative.stem)
    if z > 30 or x >= 2**z or y >= 2**z:
        return None
    return x, y, z


def find_chips(folder: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Chip]:
    """The chips at the highest zoom present in `folder` (lower zooms are redundant)."""
    chips = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            xyz = parse_chip(path.relative_to(folder))
            if xyz:
                chips.append(Chip(*xyz, path=path))
    top = top_zoom([(c.x, c.y, c.z) for c in chips], max_pixels, folder.name)
    return [chip for chip in chips if chip.z == top]


def top_zoom(tiles: list[tuple[int, int, int]], max_pixels: int, label: str) -> int:
    """The zoom the mosaic is made at, once its extent there is known to be affordable.

    Raises TooLarge (413, with the limit) for an extent over the pixel budget or spread
    far beyond the chips, Unprocessable when there are no chips at all.
    """
    if not tiles:
        raise Unprocessable(
            f"no XYZ chips found in {label}: name them {{z}}/{{x}}/{{y}}.png "
            "or *-{x}-{y}-{z}.png"
        )
    z = max(t[2] for t in tiles)
    top = {(x, y) for x, y, tz in tiles if tz == z}
    xs, ys = [x for x, _ in top], [y for _, y in top]
    width, height = max(xs) - min(xs) + 1, max(ys) - min(ys) + 1
    pixels = width * height * CHIP_SIZE**2
    detail: dict[str, Any] = {
        "zoom": z,
        "chips": len(top),
        "extent_tiles": [width, height],
        "limit": max_pixels,
    }
    if pixels > max_pixels:
        raise TooLarge(
            f"the chips of {label} span {width}x{height} tiles at zoom {z} ({pixels} pixels); "
            f"the limit is {max_pixels} pixels: register each area on its own",
            **detail,
        )
    if width * height > MAX_SPREAD * len(top):
        raise TooLarge(
            f"the {len(top)} chips of {label} are spread over {width}x{height} tiles at zoom "
            f"{z}; a mosaic may span at most {MAX_SPREAD} tiles per chip: register each "
            "cluster of chips on its own",
            **detail,
        )
    return z


def chips_to_cog(
    folder: Path,
    dst: Path,
    progress: Progress | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Path:
    """Mosaic the chips of `folder` into a JPEG COG with an internal mask at `dst`.

    The intermediate mosaic is uncompressed and sparse: only chip blocks take disk.
    """
    chips = find_chips(folder, max_pixels)
    z = chips[0].z
    xmin, xmax = min(c.x for c in chips), max(c.x for c in chips)
    ymin, ymax = min(c.y for c in chips), max(c.y for c in chips)
    res = WORLD_M / (CHIP_SIZE * 2**z)
    left, top = mercantile.xy(*mercantile.ul(xmin, ymin, z))
    mosaic = dst.with_suffix(".mosaic.tif")
    dst.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": (xmax - xmin + 1) * CHIP_SIZE,
        "height": (ymax - ymin + 1) * CHIP_SIZE,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:3857",
        "transform": from_origin(left, top, res, res),
        "tiled": True,
        "blockxsize": CHIP_SIZE,
        "blockysize": CHIP_SIZE,
        "sparse_ok": True,
    }
    try:
        env = rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True)
        with env, rasterio.open(mosaic, "w", **profile) as out:
            for i, chip in enumerate(chips):
                rgb, alpha = _read_chip(chip.path)
                window = Window(
                    (chip.x - xmin) * CHIP_SIZE, (chip.y - ymin) * CHIP_SIZE, CHIP_SIZE, CHIP_SIZE
                )
                out.write(rgb, window=window)
                out.write_mask(alpha, window=window)
                if progress and i % 16 == 0:
                    progress(0.5 * i / len(chips))
        _sparse_cog(mosaic, dst)
        if progress:
            progress(1.0)
        return dst
    finally:
        mosaic.unlink(missing_ok=True)


def _sparse_cog(mosaic: Path, dst: Path) -> None:
    """GDAL's COG driver, not rio-cogeo: it keeps empty blocks empty (SPARSE_OK), 4x faster here."""
    tmp = dst.with_suffix(".partial.tif")
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", GDAL_TIFF_INTERNAL_MASK=True):
        copy(
            mosaic,
            tmp,
            driver="COG",
            COMPRESS="JPEG",
            QUALITY=90,
            BLOCKSIZE=512,
            SPARSE_OK=True,
            OVERVIEW_RESAMPLING="AVERAGE",
        )
    tmp.replace(dst)


def _read_chip(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """RGB [3,256,256] and a 0/255 mask; Pillow decodes by content, whatever the suffix.

    The size is checked from the header before decoding, so a PNG claiming 20000² px
    costs nothing; every way Pillow reports a broken file is the user's 422.
    """
    try:
        with Image.open(path) as image:
            if image.size != (CHIP_SIZE, CHIP_SIZE):
                raise Unprocessable(
                    f"chip {path.name} is {image.size[0]}x{image.size[1]} px; chips must be "
                    "256x256",
                    chip=path.name,
                )
            image.load()
            rgba = np.asarray(image.convert("RGBA"))
    except (
        UnidentifiedImageError,
        DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
        struct.error,
        zlib.error,
    ) as exc:
        raise Unprocessable(f"chip {path.name} is not a readable image", chip=path.name) from exc
    return np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1)), rgba[..., 3].copy()


def extract_zip(
    archive: Path,
    dest: Path,
    max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    label: str | None = None,
) -> Path:
    """Unpack the top-zoom chips of a zip into `dest`, refusing traversal and bombs.

    Everything that can be judged from the central directory (names, the extent, the
    declared sizes, encryption) is judged before a byte is unpacked; each member is then
    streamed to disk under a byte cap, since declared sizes may lie.
    """
    label = label or archive.name
    entries = _declared_entries(archive)
    if entries is None or entries > MAX_ZIP_ENTRIES:
        raise TooLarge(
            f"{label} lists more than {MAX_ZIP_ENTRIES} entries (or a ZIP64 directory); "
            "send at most that many chips per zip",
            limit=MAX_ZIP_ENTRIES,
        )
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise InvalidInput(f"{label} is not a valid zip file", file=label) from exc
    with zf:
        chips: list[tuple[zipfile.ZipInfo, PurePosixPath, tuple[int, int, int]]] = []
        for member in zf.infolist():
            if member.is_dir():
                continue
            name = PurePosixPath(member.filename)
            if name.is_absolute() or ".." in name.parts or "\x00" in member.filename:
                raise InvalidInput(
                    f"zip member {member.filename[:200]!r} points outside the archive", file=label
                )
            xyz = parse_chip(name)
            if xyz is not None:
                chips.append((member, name, xyz))
        top = top_zoom([xyz for _, _, xyz in chips], max_pixels, label)
        chips = [chip for chip in chips if chip[2][2] == top]
        total = sum(member.file_size for member, _, _ in chips)
        if total > max_bytes:
            raise TooLarge(
                f"the zip unpacks to {total} bytes; the limit is {max_bytes}", limit=max_bytes
            )
        for member, _, _ in chips:
            if member.flag_bits & 0x1:
                raise InvalidInput(
                    f"zip member {member.filename!r} is encrypted; send an unencrypted zip",
                    file=label,
                )
        dest.mkdir(parents=True, exist_ok=True)
        budget = max_bytes
        for member, name, _ in chips:
            target = dest.joinpath(*name.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            budget -= _unpack(zf, member, target, min(MAX_CHIP_BYTES, budget), label)
    return dest


def _declared_entries(archive: Path) -> int | None:
    """The entry count of the end-of-central-directory record, read from the file's tail
    before zipfile builds every entry; None for ZIP64 (0xFFFF) counts. A file without
    the record reports 0 and is refused by ZipFile as not a zip."""
    with open(archive, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - (65535 + 22)))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return 0
    (count,) = struct.unpack_from("<H", tail, at + 10)
    return None if count == 0xFFFF else count


def _unpack(
    zf: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, cap: int, label: str
) -> int:
    """Stream one member to `target` in 64 KB pieces, stopping past `cap` bytes."""
    written = 0
    try:
        with zf.open(member) as src, open(target, "wb") as out:
            while piece := src.read(64 * 1024):
                written += len(piece)
                if written > cap:
                    raise TooLarge(
                        f"zip member {member.filename!r} unpacks to more than {cap} bytes; a "
                        f"chip file may be at most {MAX_CHIP_BYTES}",
                        limit=cap,
                    )
                out.write(piece)
    except (
        zipfile.BadZipFile,
        zlib.error,
        lzma.LZMAError,
        EOFError,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        # a bad CRC, corrupt deflate or LZMA, a truncated member, an unknown method
        raise InvalidInput(
            f"zip member {member.filename!r} cannot be unpacked: {exc}"[:300], file=label
        ) from exc
    return written
