"""Sources from STAC Items: the Item says where its COG is and who to credit.

A catalogue's Item (a local `.json` under a data root, or an http(s) URL vetted like any
other remote read) names its imagery as an asset; the COG asset is then registered
like a path or URL the user gave (the same data-root and SSRF rules apply to it), and
the Item's bbox, datetime and credit are kept with the source. An Item read from the
network may only point at http(s) assets: a remote document never names a server file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pystac
from sqlalchemy.orm import Session

from tilesight.errors import InvalidInput
from tilesight.imagery.sources import SourceInfo
from tilesight.remote import RemoteClient, vet_url
from tilesight.settings import Settings
from tilesight.tables import Source

MAX_ITEM_BYTES = 2 * 1024 * 1024
# best first: a COG, then any GeoTIFF (converted on registration)
TIFF_TYPES = (
    pystac.MediaType.COG,
    pystac.MediaType.GEOTIFF,
    pystac.MediaType.TIFF,
)
ASSET_KEYS = ("visual", "image", "data", "cog")


@dataclass(frozen=True)
class StacItem:
    id: str
    href: str  # where the Item was read, for the record
    asset_key: str
    asset_href: str  # an absolute local path or an http(s) URL
    bbox: list[float] | None
    datetime: str | None  # ISO 8601; start of the range for a range Item
    attribution: str
    title: str | None


def is_item_uri(uri: str) -> bool:
    """Registration takes a `.json` path or URL as a STAC Item (no GeoJSON is imagery)."""
    return urlsplit(uri).path.lower().endswith(".json")


def read_item(settings: Settings, uri: str, local_path: Any) -> StacItem:
    """Read and check the Item at `uri`; `local_path` vets a local path (data roots)."""
    remote = uri.startswith(("http://", "https://"))
    if remote:
        vet_url(uri, settings.remote_allowlist)
        client = RemoteClient(settings.remote_allowlist, settings.request_timeout_s)
        try:
            body = client.get(uri, MAX_ITEM_BYTES).content
        finally:
            client.close()
        href = uri
    else:
        path: Path = local_path(settings, uri)
        if path.stat().st_size > MAX_ITEM_BYTES:
            raise InvalidInput(f"a STAC Item is at most {MAX_ITEM_BYTES} bytes", uri=uri[:200])
        body = path.read_bytes()
        href = str(path)
    item = _parse(body, href)
    key, asset = _tiff_asset(item)
    asset_href = asset.get_absolute_href() or asset.href
    if asset_href.startswith("file://"):
        asset_href = urlsplit(asset_href).path
    if is_item_uri(asset_href):
        raise InvalidInput("a STAC Item's image asset must be a GeoTIFF, not JSON", asset=key)
    if remote and not asset_href.startswith(("http://", "https://")):
        raise InvalidInput(
            "a STAC Item read from a URL may only point at http(s) assets",
            asset=key,
            href=asset.href[:200],
        )
    when = item.datetime or item.common_metadata.start_datetime
    return StacItem(
        id=item.id,
        href=href,
        asset_key=key,
        asset_href=asset_href,
        bbox=[float(v) for v in item.bbox] if item.bbox else None,
        datetime=when.isoformat() if isinstance(when, datetime) else None,
        attribution=_attribution(item),
        title=item.common_metadata.title,
    )


def record(session: Session, source_id: str, item: StacItem) -> SourceInfo:
    """Keep the Item's facts with the source just registered from its asset."""
    row = session.get(Source, source_id)
    assert row is not None
    row.original_uri = item.href
    row.info = {
        **(row.info or {}),
        "stac": {
            "item": item.id,
            "href": item.href,
            "asset": item.asset_key,
            "bbox": item.bbox,
            "datetime": item.datetime,
        },
    }
    session.commit()
    session.refresh(row)
    return SourceInfo.from_row(row)


def _parse(body: bytes, href: str) -> pystac.Item:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("the .json file is not JSON; give a STAC Item", uri=href[:200]) from exc
    if not isinstance(data, dict) or data.get("type") != "Feature" or "stac_version" not in data:
        raise InvalidInput(
            "a .json source must be a STAC Item (a Feature with stac_version and assets)",
            uri=href[:200],
        )
    try:
        item = pystac.Item.from_dict(data, href=href, preserve_dict=False)
    except (KeyError, TypeError, ValueError, pystac.STACError) as exc:
        raise InvalidInput(f"not a valid STAC Item: {exc}", uri=href[:200]) from exc
    item.set_self_href(href)
    return item


def _tiff_asset(item: pystac.Item) -> tuple[str, pystac.Asset]:
    candidates = [
        (TIFF_TYPES.index(a.media_type), _key_rank(k), k, a)
        for k, a in item.assets.items()
        if a.media_type in TIFF_TYPES
    ]
    if not candidates:
        raise InvalidInput(
            "the STAC Item has no GeoTIFF/COG asset (media type image/tiff; application=geotiff)",
            assets={k: a.media_type for k, a in item.assets.items()},
        )
    _, _, key, asset = min(candidates, key=lambda c: c[:3])
    return key, asset


def _key_rank(key: str) -> int:
    return ASSET_KEYS.index(key) if key in ASSET_KEYS else len(ASSET_KEYS)


def _attribution(item: pystac.Item) -> str:
    """The Item's own `attribution` property, else its providers and licence."""
    own = item.properties.get("attribution")
    if isinstance(own, str) and own.strip():
        return own.strip()
    providers = item.common_metadata.providers or []
    names = ", ".join(p.name for p in providers if p.name)
    licence = item.common_metadata.license
    credit = f"© {names}" if names else ""
    if licence and licence not in ("other", "proprietary"):
        credit = f"{credit} ({licence})" if credit else licence
    return credit
