"""Registering a source from what a user gives: a path, a URL, an XYZ template or an upload.

Each kind ends as one of two things on disk or on the wire: a local COG (GeoTIFFs are
converted, chip folders mosaicked, URLs downloaded first) or an XYZ URL template. The
row is written only once the imagery has been read successfully, so a failure leaves
nothing registered.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import mercantile
from shapely.geometry import box
from sqlalchemy.orm import Session

from tilesight.errors import Conflict, InvalidInput, Unprocessable
from tilesight.imagery import stac, xyz
from tilesight.imagery.center import data_center
from tilesight.imagery.chips import chips_to_cog, extract_zip
from tilesight.imagery.cog import Progress, is_cog, to_cog
from tilesight.imagery.rasters import READ_ERRORS, check_pixels, inspect, open_geotiff
from tilesight.imagery.sources import SourceInfo
from tilesight.remote import RemoteClient, check_url
from tilesight.settings import Settings
from tilesight.tables import Source

SOURCE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
REFUSED_PREFIXES = ("/vsi", "file:", "ftp:", "s3:", "gs:", "<")
# ids that name folders or routes of Tilesight's own, never a source
RESERVED_IDS = frozenset({"upload", "uploads", "staging"})


def register_source(
    settings: Settings,
    session: Session,
    uri: str,
    *,
    name: str,
    attribution: str = "",
    source_id: str | None = None,
    progress: Progress | None = None,
    minzoom: int | None = None,
    maxzoom: int | None = None,
    reuse_existing: bool = False,
) -> SourceInfo:
    """Register `uri` (local path or http(s) URL of a GeoTIFF or a STAC Item, or an XYZ
    template) as a source.

    `reuse_existing` keeps a COG already made for this id (the demo's second start).
    """
    check_text(uri=uri, name=name, attribution=attribution)
    sid = new_source_id(session, source_id, name)
    uri = uri.strip()
    if stac.is_item_uri(uri):
        item = stac.read_item(settings, uri, local_path)
        register_source(
            settings, session, item.asset_href, name=name,
            attribution=attribution or item.attribution, source_id=sid, progress=progress,
        )  # fmt: skip
        return stac.record(session, sid, item)
    if xyz.is_template(uri):
        return _register_xyz(settings, session, sid, uri, name, attribution, minzoom, maxzoom)
    if uri.startswith(("http://", "https://")):
        check_url(uri, settings.remote_allowlist)
        owned = settings.sources_dir / sid
        try:
            client = RemoteClient(settings.remote_allowlist, settings.request_timeout_s)
            try:
                downloaded = client.download(uri, owned / "download", settings.upload_max_bytes)
            finally:
                client.close()
            return register_file(
                settings, session, downloaded, name=name, attribution=attribution,
                source_id=sid, original_uri=uri, progress=progress, label=uri[:200],
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(owned, ignore_errors=True)
            raise
    path = local_path(settings, uri)
    return register_file(
        settings, session, path, name=name, attribution=attribution, source_id=sid,
        original_uri=uri, progress=progress, in_place=True, reuse_existing=reuse_existing,
    )  # fmt: skip


def register_file(
    settings: Settings,
    session: Session,
    path: Path,
    *,
    name: str,
    attribution: str,
    source_id: str,
    original_uri: str,
    progress: Progress | None = None,
    in_place: bool = False,
    reuse_existing: bool = False,
    label: str | None = None,
) -> SourceInfo:
    """Register a file we may read: a GeoTIFF/COG, a zip of chips, or a folder of chips.

    `in_place` serves an already-valid COG from where it is instead of copying it.
    `label` is what the user sent (a file name, a URL): errors name it, not our paths.
    Anything over `settings.source_max_pixels` is refused from names or headers first.
    """
    owned = settings.sources_dir / source_id
    made_dir = not owned.exists()
    label = label or path.name
    try:
        kind, cog = _to_cog(settings, path, owned / f"{source_id}.tif", label, progress,
                            in_place=in_place, reuse_existing=reuse_existing)  # fmt: skip
        if not in_place and path.is_file() and path != cog:
            path.unlink(missing_ok=True)  # a download or an upload, now converted
        row = _cog_row(cog, kind, source_id, name, attribution, original_uri)
        session.add(row)
        session.commit()
        session.refresh(row)
        return SourceInfo.from_row(row)
    except BaseException as exc:
        session.rollback()
        if made_dir:
            shutil.rmtree(owned, ignore_errors=True)
        if isinstance(exc, READ_ERRORS):
            raise Unprocessable(
                f"{label} cannot be read: the file is truncated or corrupt", file=label
            ) from exc
        raise


def _to_cog(
    settings: Settings,
    path: Path,
    cog: Path,
    label: str,
    progress: Progress | None,
    *,
    in_place: bool,
    reuse_existing: bool,
) -> tuple[str, Path]:
    """The kind of source and the COG that serves it: chips (a folder or a zip) are
    mosaicked, a GeoTIFF converted unless it is a COG already."""
    budget = settings.source_max_pixels
    if reuse_existing and cog.exists():
        return ("chips" if path.is_dir() or _is_zip(path) else "cog"), cog
    if path.is_dir():
        chips_to_cog(path, cog, progress, budget)
        return "chips", cog
    if _is_zip(path):
        folder = extract_zip(path, cog.parent / "chips", settings.upload_max_bytes, budget, label)
        chips_to_cog(folder, cog, progress, budget)
        shutil.rmtree(folder, ignore_errors=True)
        return "chips", cog
    return "cog", _geotiff_cog(path, cog, label, budget, progress, in_place)


def _cog_row(
    cog: Path, kind: str, source_id: str, name: str, attribution: str, original_uri: str
) -> Source:
    """The `sources` row of a COG, with what tiles need measured once: bounds, zooms, the
    display stretch and a point on real pixels."""
    facts = inspect(cog)
    return Source(
        id=source_id,
        name=name,
        kind=kind,
        uri=str(cog),
        original_uri=original_uri,
        attribution=attribution,
        crs=facts.crs,
        bounds=list(facts.bounds),
        footprint=f"SRID=4326;{box(*facts.bounds).wkt}",
        resolution_m=facts.resolution_m,
        minzoom=facts.minzoom,
        maxzoom=facts.maxzoom,
        band_count=facts.band_count,
        dtype=facts.dtype,
        info={
            "native_zoom": facts.native_zoom,
            "rescale": facts.rescale,
            "center": data_center(cog),
        },
    )


def _geotiff_cog(
    path: Path, cog: Path, label: str, budget: int, progress: Progress | None, in_place: bool
) -> Path:
    """The COG to serve for a GeoTIFF: the file itself when it is one, else a conversion
    (refused from the header when it would be over the pixel budget)."""
    with open_geotiff(path, label) as dataset:  # refuses non-GeoTIFFs before any work
        width, height = dataset.width, dataset.height
    if is_cog(path):
        if in_place:
            return path
        cog.parent.mkdir(parents=True, exist_ok=True)  # an upload: sources/<id>/ is new
        return path.rename(cog)
    check_pixels(width, height, budget, label)
    return to_cog(path, cog, progress)


def check_text(**fields: str) -> None:
    """A NUL byte reaches no path, URL or database column: a 400 naming the field."""
    for field, value in fields.items():
        if "\x00" in value:
            raise InvalidInput(f"{field} contains a NUL byte", field=field)


def local_path(settings: Settings, uri: str) -> Path:
    """Resolve a user's path (symlinks too) and accept it only inside a data root.

    Errors name the user's `uri`, never the data roots or other server paths.
    """
    if uri.startswith(REFUSED_PREFIXES) or "://" in uri:
        raise InvalidInput(
            "unsupported source: give a local path under a data root, an http(s) URL, "
            "or an XYZ template with {z}, {x} and {y}",
            uri=uri[:200],
        )
    check_text(uri=uri)
    try:
        path = Path(uri).expanduser()
        if not path.is_absolute():
            path = settings.home / path
        resolved = path.resolve()
        exists = resolved.exists()
    except (OSError, RuntimeError, ValueError) as exc:  # a name over 255 bytes, a loop
        raise InvalidInput(
            f"uri is not a usable path: {exc.strerror or exc}"
            if isinstance(exc, OSError)
            else f"uri is not a usable path: {exc}",
            field="uri",
        ) from exc
    roots = [root.resolve() for root in settings.data_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise InvalidInput(
            "the path is outside the directories sources may come from; put the file "
            "under a data root or upload it",
            uri=uri[:200],
        )
    if not exists:
        raise InvalidInput(f"no such file or folder: {uri[:200]}", uri=uri[:200])
    return resolved


def _register_xyz(
    settings: Settings,
    session: Session,
    sid: str,
    template: str,
    name: str,
    attribution: str,
    minzoom: int | None,
    maxzoom: int | None,
) -> SourceInfo:
    low = 0 if minzoom is None else minzoom
    high = 19 if maxzoom is None else maxzoom
    if not 0 <= low <= high <= 24:
        raise InvalidInput("need 0 <= minzoom <= maxzoom <= 24", minzoom=low, maxzoom=high)
    xyz.probe(settings, template, low)
    bounds = (-180.0, -85.0511287798, 180.0, 85.0511287798)
    row = Source(
        id=sid,
        name=name,
        kind="xyz",
        uri=template,
        original_uri=template,
        attribution=attribution,
        crs="EPSG:3857",
        bounds=list(bounds),
        footprint=f"SRID=4326;{box(*bounds).wkt}",
        resolution_m=round(mercantile.CE / (256 * 2**high), 4),
        minzoom=low,
        maxzoom=high,
        band_count=3,
        dtype="uint8",
        info={"native_zoom": high, "rescale": None},
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return SourceInfo.from_row(row)


def new_source_id(session: Session, source_id: str | None, name: str) -> str:
    if source_id is not None:
        if not SOURCE_ID.match(source_id):
            raise InvalidInput(
                "a source id is 1-64 lowercase letters, digits, '-' or '_'", id=source_id[:100]
            )
        if source_id in RESERVED_IDS:
            raise InvalidInput(
                f"{source_id!r} is reserved; choose another source id",
                id=source_id,
                reserved=sorted(RESERVED_IDS),
            )
        if session.get(Source, source_id) is not None:
            raise Conflict(f"a source {source_id!r} exists already; delete it first", id=source_id)
        return source_id
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48] or "source"
    candidate = slug
    while candidate in RESERVED_IDS or session.get(Source, candidate) is not None:
        candidate = f"{slug}-{uuid.uuid4().hex[:6]}"
    return candidate


def _is_zip(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
