"""The demo imagery shipped in data/demo, registered at first start.

Attribution strings are those data/demo/README.md asks for; they travel with the
sources into every TileJSON and the map's attribution control.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from tilesight.imagery.register import register_file
from tilesight.settings import Settings
from tilesight.tables import Source

OAM = (
    "Imagery © OpenAerialMap contributors (CC BY 4.0); "
    "buildings © OpenStreetMap contributors (ODbL)"
)
SPACENET = "Imagery and buildings: SpaceNet (CC BY-SA 4.0)"


@dataclass(frozen=True)
class DemoSource:
    id: str
    name: str
    path: str  # relative to settings.demo_data
    attribution: str


DEMO_SOURCES = (
    DemoSource("tanzania", "Coastal Tanzania (OpenAerialMap)", "buildings/tanzania", OAM),
    DemoSource("nairobi", "Nairobi, Kenya (OpenAerialMap)", "buildings/nairobi", OAM),
    DemoSource(
        "atlanta",
        "Atlanta, USA (SpaceNet, 16-bit pan)",
        "atlanta-spacenet/sample_geotiff.tif",
        SPACENET,
    ),  # fmt: skip
)


def register_demo_sources(settings: Settings, session: Session) -> list[str]:
    """Register the demo sources not registered yet; returns the ids it registered.

    A COG made on an earlier start (kept under settings.sources_dir) is reused, so only
    the very first start pays for the conversion.
    """
    done = []
    for demo in DEMO_SOURCES:
        path = settings.demo_data / demo.path
        if session.get(Source, demo.id) is not None or not path.exists():
            continue
        # Our own files: trusted, so not subject to the data-roots rule for user paths.
        register_file(
            settings,
            session,
            path.resolve(),
            name=demo.name,
            attribution=demo.attribution,
            source_id=demo.id,
            original_uri=str(path),
            in_place=True,
            reuse_existing=True,
        )
        done.append(demo.id)
    return done
