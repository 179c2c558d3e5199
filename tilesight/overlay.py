"""Probabilities -> the picture drawn over the map: an RGBA overlay, a mask or grey levels.

Colouring is kept apart from prediction so that the cached probabilities serve every
threshold, colormap and opacity a viewer asks for without running the model again.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from tilesight.errors import InvalidInput

Mode = Literal["overlay", "mask", "probability"]

# anchor colours of a few perceptual ramps (0 -> 1), linearly interpolated
RAMPS: dict[str, list[str]] = {
    "viridis": ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"],
    "magma": ["#000004", "#51127c", "#b73779", "#fc8961", "#fcfdbf"],
    "inferno": ["#000004", "#56106e", "#bb3754", "#f98e09", "#fcffa4"],
    "heat": ["#ffff00", "#ff8000", "#ff0000"],
}
DEFAULT_COLOR = "#ff3b30"
BACKGROUND_NAMES = {"background", "bg", "none", "nodata"}


@dataclass(frozen=True)
class Style:
    """How to draw probabilities; `as_dict()` feeds ETags so each style is cached apart."""

    mode: Mode = "overlay"
    threshold: float | None = None  # None: the model's own threshold from metadata
    colormap: str | None = None  # None: class colours; a ramp name; or "#rrggbb"
    opacity: float = 0.6

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise InvalidInput("threshold must be between 0 and 1", threshold=self.threshold)
        if not 0.0 <= self.opacity <= 1.0:
            raise InvalidInput("opacity must be between 0 and 1", opacity=self.opacity)
        if self.colormap is not None and self.colormap not in RAMPS:
            try:
                hex_rgb(self.colormap)
            except ValueError as exc:
                raise InvalidInput(
                    "colormap is a ramp name or a colour like #ff3b30",
                    colormap=self.colormap,
                    ramps=sorted(RAMPS),
                ) from exc

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "threshold": self.threshold,
            "colormap": self.colormap,
            "opacity": self.opacity,
        }


def hex_rgb(color: str) -> tuple[int, int, int]:
    text = color.strip().lstrip("#")
    if len(text) == 3:
        text = "".join(c * 2 for c in text)
    if len(text) != 6:
        raise ValueError(f"not a #rrggbb colour: {color!r}")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def ramp(name: str, values: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] colours of `values` (0..1) along the named ramp."""
    anchors = np.array([hex_rgb(c) for c in RAMPS[name]], dtype=np.float32)
    stops = np.linspace(0.0, 1.0, len(anchors))
    v = np.clip(values, 0.0, 1.0)
    channels = [np.interp(v, stops, anchors[:, k]) for k in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


#: Classes a model predicts but the map does not draw: the background, and the thin band
#: between touching roofs that a building model learns only to cut them apart.
HIDDEN_NAMES = BACKGROUND_NAMES | {"border"}


def foreground(classes: list[dict[str, Any]]) -> list[int]:
    """Indices of the classes worth drawing (not the background, not the border band)."""
    picked = [
        i for i, c in enumerate(classes) if str(c.get("name", "")).lower() not in HIDDEN_NAMES
    ]
    return picked or list(range(len(classes)))


def render(
    probs: np.ndarray, classes: list[dict[str, Any]], style: Style, threshold: float
) -> Image.Image:
    """The image for `probs` (float [C, H, W], 0..1) drawn in `style`.

    overlay: RGBA, the class colour (or a ramp of the probability) where the probability
    reaches the threshold, alpha growing with the probability up to `opacity`;
    mask: 8-bit grey, 255 where any drawn class reaches the threshold;
    probability: 8-bit grey, the highest drawn class probability times 255.
    """
    keep = foreground(classes)
    drawn = probs[keep]
    best = drawn.max(axis=0)
    winner = np.asarray(keep)[drawn.argmax(axis=0)]
    if style.mode == "probability":
        return Image.fromarray((np.clip(best, 0, 1) * 255).round().astype(np.uint8))
    hit = best >= threshold
    if style.mode == "mask":
        return Image.fromarray(np.where(hit, 255, 0).astype(np.uint8))
    h, w = best.shape
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    if style.colormap in RAMPS:
        rgba[..., :3] = ramp(style.colormap, best)
    else:
        palette = np.array(
            [hex_rgb(style.colormap or c.get("color") or DEFAULT_COLOR) for c in classes],
            dtype=np.uint8,
        )
        rgba[..., :3] = palette[winner]
    alpha = np.clip(best, 0.0, 1.0) * style.opacity * 255.0
    rgba[..., 3] = np.where(hit, alpha.round(), 0).astype(np.uint8)
    return Image.fromarray(rgba)


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over a few bytes
    return buffer.getvalue()


BUILDING_CLASSES = [{"name": "building", "color": DEFAULT_COLOR}]
BORDER_CLASS = {"name": "border", "color": "#ffd60a"}
#: Colours for common land-cover names; other classes take the next of PALETTE.
KNOWN_COLOURS = {
    "building": DEFAULT_COLOR, "water": "#1f78b4", "tree": "#1b7837", "trees": "#1b7837",
    "forest": "#1b7837", "grass": "#a6dba0", "impervious": "#8c8c8c", "road": "#8c8c8c",
    "bare": "#d9b38c", "cropland": "#fee08b",
}  # fmt: skip
PALETTE = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf"]


def class_entries(classes: Sequence[str] = (), border: bool = False) -> list[dict[str, str]]:
    """The `classes` of a model's metadata: the names and the colours the overlay draws
    them in. No names: a building model (with its border class when it has one)."""
    if not classes:
        return BUILDING_CLASSES + ([BORDER_CLASS] if border else [])
    known = ["#000000"] + [KNOWN_COLOURS.get(n.lower(), "") for n in classes[1:]]
    # spare colours unlike the known ones first (PALETTE's red beside the building red
    # would make two classes one on the map), the rest only when classes outnumber them
    distinct = [c for c in PALETTE if all(_colour_gap(c, k) > 100 for k in known if k)]
    spare = iter((distinct + [c for c in PALETTE if c not in distinct]) * 4)
    pairs = zip(classes, known, strict=True)
    return [{"name": n, "color": k or next(spare)} for n, k in pairs]


def _colour_gap(a: str, b: str) -> float:
    """Euclidean distance of two #rrggbb colours in RGB (0..441)."""
    return sum((int(a[i : i + 2], 16) - int(b[i : i + 2], 16)) ** 2 for i in (1, 3, 5)) ** 0.5
