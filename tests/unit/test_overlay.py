"""Colouring probabilities: thresholds, opacity, ramps, masks, grey levels, many classes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tilesight.errors import InvalidInput
from tilesight.overlay import Style, class_entries, hex_rgb, ramp, render, to_png

BUILDING = [{"name": "building", "color": "#ff3b30"}]


def gradient() -> np.ndarray:
    """[1, 4, 256] probabilities rising 0 -> 1 left to right."""
    return np.tile(np.linspace(0, 1, 256, dtype=np.float32), (1, 4, 1))


def test_overlay_colours_hits_with_alpha_from_probability() -> None:
    image = render(gradient(), BUILDING, Style(opacity=0.8), threshold=0.5)
    assert image.mode == "RGBA"
    rgba = np.asarray(image)
    probs = gradient()[0]
    below = probs < 0.5
    assert (rgba[..., 3][below] == 0).all()
    assert (rgba[..., :3][~below] == hex_rgb("#ff3b30")).all()
    expected = np.round(probs[~below] * 0.8 * 255)
    assert np.abs(rgba[..., 3][~below].astype(float) - expected).max() <= 1
    assert rgba[0, -1, 3] == round(0.8 * 255)


def test_threshold_moves_the_edge() -> None:
    low = np.asarray(render(gradient(), BUILDING, Style(), threshold=0.2))[..., 3]
    high = np.asarray(render(gradient(), BUILDING, Style(), threshold=0.9))[..., 3]
    assert (low > 0).sum() > (high > 0).sum() > 0
    assert (low[:, : int(0.2 * 255)] == 0).all()


def test_mask_and_probability_modes_are_grey() -> None:
    mask = render(gradient(), BUILDING, Style(mode="mask"), threshold=0.5)
    assert mask.mode == "L"
    values = np.asarray(mask)
    assert set(np.unique(values)) == {0, 255}
    assert (values[:, :128] == 0).all() and (values[:, 129:] == 255).all()
    grey = np.asarray(render(gradient(), BUILDING, Style(mode="probability"), threshold=0.5))
    assert np.abs(grey[0].astype(float) - np.linspace(0, 255, 256)).max() <= 0.51


def test_ramp_and_single_colour_colormaps() -> None:
    rgba = np.asarray(render(gradient(), BUILDING, Style(colormap="viridis"), threshold=0.0))
    assert tuple(rgba[0, 0, :3]) == hex_rgb("#440154")
    assert tuple(rgba[0, -1, :3]) == hex_rgb("#fde725")
    assert (ramp("heat", np.array([0.5])) == [[255, 128, 0]]).all()
    green = np.asarray(render(gradient(), BUILDING, Style(colormap="#00ff88"), threshold=0.5))
    assert tuple(green[0, -1, :3]) == (0, 255, 136)


def test_multi_class_takes_each_winner_colour_and_skips_background() -> None:
    classes = [
        {"name": "background", "color": "#000000"},
        {"name": "water", "color": "#0000ff"},
        {"name": "trees", "color": "#00ff00"},
    ]
    probs = np.zeros((3, 2, 2), dtype=np.float32)
    probs[0] = 0.9  # background would win everywhere if it were drawn
    probs[1, 0, :] = 0.8
    probs[2, 1, :] = 0.7
    rgba = np.asarray(render(probs, classes, Style(opacity=1.0), threshold=0.5))
    assert tuple(rgba[0, 0]) == (0, 0, 255, round(0.8 * 255))
    assert tuple(rgba[1, 1]) == (0, 255, 0, round(0.7 * 255))


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 1.5}, {"opacity": -0.1}, {"colormap": "rainbow-ish"}]
)
def test_bad_style_says_what_to_change(kwargs: dict) -> None:
    with pytest.raises(InvalidInput):
        Style(**kwargs)


def test_png_round_trip() -> None:
    image = render(gradient(), BUILDING, Style(), threshold=0.5)
    again = Image.open(io.BytesIO(to_png(image)))
    assert np.array_equal(np.asarray(again), np.asarray(image))


def test_class_colours_stay_apart_on_the_map() -> None:
    names = ("background", "building", "yard", "Water", "trees", "shed")
    entries = class_entries(names)
    assert [e["name"] for e in entries] == list(names)
    colours = {e["name"]: hex_rgb(e["color"]) for e in entries}
    assert colours["background"] == (0, 0, 0)
    assert colours["building"] == hex_rgb("#ff3b30") and colours["Water"] == hex_rgb("#1f78b4")
    # the spare colours given to yard and shed are unlike the known ones and each other
    drawn = [np.array(colours[n]) for n in names[1:]]
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(drawn) for b in drawn[i + 1 :]]
    assert min(gaps) > 100, colours


def test_a_border_model_draws_its_buildings_not_the_band_between_them() -> None:
    """The border class only cuts touching roofs apart; the map shows buildings."""
    classes = class_entries((), border=True)
    probs = np.zeros((2, 4, 4), np.float32)
    probs[0, :, :2] = 0.9  # buildings on the left
    probs[1, :, 2:] = 0.8  # a border band on the right
    grey = np.asarray(render(probs, classes, Style(mode="probability"), 0.5))
    assert (grey[:, :2] == 230).all() and (grey[:, 2:] == 0).all()
