"""Registered imagery sources as the rest of the code sees them: `SourceInfo`.

`SourceInfo` is a frozen copy of a `tables.Source` row holding everything a tile read
needs, so tile requests never touch the ORM, and readers can be cached by it.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tilesight.errors import NotFound
from tilesight.settings import Settings
from tilesight.tables import Source


@dataclass(frozen=True)
class SourceInfo:
    id: str
    name: str
    kind: str  # cog | chips | xyz; chips are served from the COG they were mosaicked into
    uri: str  # a local COG path, or an XYZ URL template
    attribution: str
    crs: str
    bounds: tuple[float, float, float, float]  # west, south, east, north (EPSG:4326)
    minzoom: int
    maxzoom: int
    native_zoom: int
    resolution_m: float | None
    band_count: int
    dtype: str
    rescale: tuple[float, float] | None  # default stretch to 8 bit, for non-uint8 data
    version: str  # changes when the source is re-registered: part of every tile ETag
    data_point: tuple[float, float] | None = None  # lon, lat on real pixels (center.py)
    acquired: str | None = None  # ISO 8601, from a STAC Item's datetime (stac.py)

    @classmethod
    def from_row(cls, row: Source) -> SourceInfo:
        info: dict[str, Any] = row.info or {}
        rescale = info.get("rescale")
        return cls(
            id=row.id,
            name=row.name,
            kind=row.kind,
            uri=row.uri,
            attribution=row.attribution or "",
            crs=row.crs or "",
            bounds=tuple(row.bounds),  # type: ignore[arg-type]
            minzoom=row.minzoom,
            maxzoom=row.maxzoom,
            native_zoom=int(info.get("native_zoom", row.maxzoom)),
            resolution_m=row.resolution_m,
            band_count=row.band_count,
            dtype=row.dtype,
            rescale=(float(rescale[0]), float(rescale[1])) if rescale else None,
            version=row.created_at.isoformat() if row.created_at else "",
            data_point=tuple(info["center"]) if info.get("center") else None,  # type: ignore[arg-type]
            acquired=(info.get("stac") or {}).get("datetime"),
        )

    @property
    def center(self) -> tuple[float, float]:
        """A point with imagery under it: chip mosaics have gaps at their middle."""
        if self.data_point is not None:
            return self.data_point
        west, south, east, north = self.bounds
        return ((west + east) / 2, (south + north) / 2)


def get_source(session: Session, source_id: str) -> SourceInfo:
    """The source `source_id`, or NotFound naming the registered ones."""
    row = session.get(Source, source_id)
    if row is None:
        known = session.scalars(select(Source.id).order_by(Source.id).limit(50)).all()
        raise NotFound(f"no imagery source {source_id!r}", known=list(known))
    return SourceInfo.from_row(row)


def list_sources(session: Session) -> list[Source]:
    return list(session.scalars(select(Source).order_by(Source.created_at, Source.id)))


def delete_source(settings: Settings, session: Session, source_id: str) -> None:
    """Remove the row (flushed; the caller commits) and the files Tilesight made for it
    (never a user's own file); the jobs over it go with it (ON DELETE CASCADE)."""
    row = session.get(Source, source_id)
    if row is None:
        raise NotFound(f"no imagery source {source_id!r}")
    session.delete(row)
    session.flush()
    owned = settings.sources_dir / source_id
    if owned.is_dir():
        shutil.rmtree(owned, ignore_errors=True)


class SourceCache:
    """Sources by id for a few seconds, so a burst of tile requests costs one query.

    A deleted or re-registered source is seen by other processes after `ttl_s`; the
    process that made the change calls `forget`.
    """

    def __init__(self, ttl_s: float = 5.0) -> None:
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[float, SourceInfo]] = {}
        self._lock = threading.Lock()

    def get(self, session: Session, source_id: str) -> SourceInfo:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(source_id)
        if hit and hit[0] > now:
            return hit[1]
        source = get_source(session, source_id)
        with self._lock:
            self._items[source_id] = (now + self.ttl_s, source)
        return source

    def forget(self, source_id: str) -> None:
        with self._lock:
            self._items.pop(source_id, None)
