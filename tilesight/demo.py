"""The demo data loaded at first start: imagery sources and the shipped model."""

from __future__ import annotations

from collections.abc import Iterator

from tilesight.settings import Settings


def load_demo(settings: Settings) -> Iterator[str]:
    """Register what is not registered yet; yields one line per thing done."""
    yield from ()
