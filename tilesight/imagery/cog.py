"""GeoTIFF -> Cloud-Optimized GeoTIFF, so every source is read the same fast way.

A COG has internal tiling and overviews, which is what makes a 256 px tile a few
block reads at any zoom. Conversion happens once, at registration, never per tile.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext, redirect_stderr
from pathlib import Path

from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

from tilesight.imagery.rasters import READ_ERRORS, configure_gdal, open_geotiff

Progress = Callable[[float], None]  # fraction done, 0..1
# what cog_validate raises on files it cannot make sense of, beside GDAL's read errors
_VALIDATE_ERRORS: tuple[type[Exception], ...] = (
    *READ_ERRORS,
    UnboundLocalError,
    KeyError,
    IndexError,
    ValueError,
)


def is_cog(path: Path) -> bool:
    """True when the file is already a valid COG and can be served in place.

    A file rio-cogeo cannot even validate (a truncated IFD, a 65536² sparse raster,
    where it trips over its own unset variables) is no COG: conversion then refuses it.
    """
    configure_gdal()
    try:
        valid, _errors, _warnings = cog_validate(str(path), quiet=True)
    except _VALIDATE_ERRORS:
        return False
    return bool(valid)


def to_cog(src: Path, dst: Path, progress: Progress | None = None) -> Path:
    """Convert a GeoTIFF to a COG at `dst` (written beside, then renamed: never half a file)."""
    with open_geotiff(src) as dataset:
        dtype = dataset.dtypes[0]
        count = dataset.count
        has_nodata = dataset.nodata is not None
    # JPEG only suits 8-bit RGB; everything else keeps its values losslessly.
    profile = cog_profiles.get("jpeg" if dtype == "uint8" and count == 3 else "deflate")
    if profile.get("compress") == "DEFLATE":
        profile.update(predictor=2 if dtype.startswith(("uint", "int")) else 3)
    tmp = dst.with_suffix(".partial.tif")
    dst.parent.mkdir(parents=True, exist_ok=True)
    stream = _Writer(progress) if progress else None
    # rio-cogeo narrates on stderr; with a progress callback (the CLI) that text is ours.
    quiet_stderr = redirect_stderr(stream) if stream else nullcontext()
    with quiet_stderr:
        cog_translate(
            str(src),
            str(tmp),
            profile,
            add_mask=not has_nodata and profile["compress"] == "JPEG",
            overview_resampling="average",
            in_memory=False,
            quiet=stream is None,
            progress_out=stream,  # type: ignore[arg-type]
            config={"GDAL_NUM_THREADS": "ALL_CPUS", "GDAL_TIFF_INTERNAL_MASK": "YES"},
        )
    tmp.replace(dst)
    if progress:
        progress(1.0)
    return dst


class _Writer:
    """A text stream that turns click's progress bar into fractions for a callback."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def write(self, text: str) -> int:
        # click's bar prints "... 42% ..." or "[####   ]  3/10"; take the last percentage seen.
        for token in reversed(text.replace("\r", " ").split()):
            if token.endswith("%") and token[:-1].isdigit():
                self.progress(min(int(token[:-1]), 99) / 100)
                break
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return True  # or click hides the bar
