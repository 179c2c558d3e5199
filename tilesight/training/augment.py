"""Training-time augmentation, on whole batches on the training device.

Aerial tiles have no "up", so turns and flips are free. What does not transfer between
places is the camera: colour balance, brightness, sharpness, noise and ground resolution
differ from one flight or satellite to the next. The "full" recipe varies all of those so
a model trained on a few places meets a new camera less surprised; "basic" keeps the
original recipe (turns, flips, brightness and contrast) for comparison, and "scale" is
"basic" plus ground resolution alone, which tells what resolution does apart from colour
(model_repo/README.md: it lifted the left-out places and lost narrowly on the training
places' tune blocks, so "basic" stays the default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

import torch
from torch.nn import functional as F

from tilesight.model.labels import IGNORE
from tilesight.training.spec import Augmentation

#: the recipe names, as a training run may ask for them (one list: the spec's)
RECIPES: tuple[str, ...] = get_args(Augmentation)


@dataclass(frozen=True)
class Augment:
    """What is varied, and how far; `Augment.recipe(name)` gives the named sets."""

    contrast: tuple[float, float] = (0.8, 1.2)
    brightness: float = 20.0  # +- grey levels
    channel_gain: float = 0.0  # +- per-channel gain: white balance
    saturation: tuple[float, float] = (1.0, 1.0)
    blur_p: float = 0.0  # chance of a 3x3 Gaussian blur
    noise_sigma: float = 0.0  # up to this many grey levels of Gaussian noise, half the time
    scale: tuple[float, float] = (1.0, 1.0)  # ground resolution, log-uniform
    scale_p: float = 0.0

    @classmethod
    def recipe(cls, name: str) -> Augment:
        if name == "basic":
            return cls()
        if name == "full":
            return cls(
                channel_gain=0.1, saturation=(0.6, 1.4), blur_p=0.25, noise_sigma=6.0,
                scale=(0.7, 1.4), scale_p=0.5,
            )  # fmt: skip
        if name == "scale":  # basic, plus ground resolution alone (0.15-0.6 m at z19)
            return cls(scale=(0.5, 2.0), scale_p=0.5)
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(RECIPES)}")


GEOMETRY_ONLY = Augment(contrast=(1.0, 1.0), brightness=0.0)


def augment(
    image: torch.Tensor, target: torch.Tensor, how: Augment = Augment()
) -> tuple[torch.Tensor, torch.Tensor]:
    """A randomly varied copy of a batch: uint8 or float [B, 3, H, W] images and their
    targets ([B, C, H, W] float layers or a [B, H, W] class map) move together."""
    image = image.float()
    target = target.clone()
    for i in range(image.shape[0]):
        image[i], target[i] = _geometry(image[i], target[i], how)
    return _photometric(image, how).clamp(0, 255), target


def _geometry(
    im: torch.Tensor, tg: torch.Tensor, how: Augment
) -> tuple[torch.Tensor, torch.Tensor]:
    k = int(torch.randint(0, 4, ()))
    plane = (tg.ndim - 2, tg.ndim - 1)  # [C, H, W] layers or an [H, W] class map
    im, tg = torch.rot90(im, k, (1, 2)), torch.rot90(tg, k, plane)
    if bool(torch.randint(0, 2, ())):
        im, tg = im.flip(2), tg.flip(-1)
    if how.scale_p and float(torch.rand(())) < how.scale_p:
        lo, hi = (math.log(s) for s in how.scale)
        im, tg = rescale(im, tg, math.exp(float(torch.empty(()).uniform_(lo, hi))))
    return im, tg


def rescale(im: torch.Tensor, tg: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom a sample about its centre, keeping its size: a factor above 1 shows the
    ground at a finer resolution (a crop of the enlarged chip); below 1, a coarser one,
    padded with blank imagery whose labels are IGNORE so the loss skips it."""
    h, w = im.shape[-2:]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    big = F.interpolate(im[None], size=size, mode="bilinear", align_corners=False)[0]
    layers = tg if tg.ndim == 3 else tg[None]
    lab = F.interpolate(layers[None].float(), size=size, mode="nearest")[0].to(tg.dtype)
    big, lab = _fit(big, h, w, 0.0), _fit(lab, h, w, IGNORE)
    return big, lab if tg.ndim == 3 else lab[0]


def _fit(x: torch.Tensor, h: int, w: int, fill: float) -> torch.Tensor:
    """Centre-crop or centre-pad [C, h', w'] to [C, h, w]."""
    out = torch.full((x.shape[0], h, w), fill, dtype=x.dtype, device=x.device)
    sh, sw = x.shape[-2:]
    ch, cw = min(h, sh), min(w, sw)
    oy, ox, iy, ix = (h - ch) // 2, (w - cw) // 2, (sh - ch) // 2, (sw - cw) // 2
    out[:, oy : oy + ch, ox : ox + cw] = x[:, iy : iy + ch, ix : ix + cw]
    return out


def _photometric(image: torch.Tensor, how: Augment) -> torch.Tensor:
    b, c, dev = image.shape[0], image.shape[1], image.device

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.empty(*shape, device=dev).uniform_(lo, hi)

    if how.saturation != (1.0, 1.0):
        grey = image.mean(dim=1, keepdim=True)
        image = grey + (image - grey) * uniform(*how.saturation, b, 1, 1, 1)
    if how.channel_gain:
        image = image * uniform(1 - how.channel_gain, 1 + how.channel_gain, b, c, 1, 1)
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    gain = uniform(*how.contrast, b, 1, 1, 1)
    image = (image - mean) * gain + mean + uniform(-how.brightness, how.brightness, b, 1, 1, 1)
    if how.blur_p:
        kernel = torch.tensor([1.0, 2.0, 1.0], device=dev)
        kernel = (kernel[:, None] * kernel[None, :] / 16).expand(c, 1, 3, 3)
        blurred = F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
        pick = (torch.rand(b, 1, 1, 1, device=dev) < how.blur_p).float()
        image = pick * blurred + (1 - pick) * image
    if how.noise_sigma:
        sigma = uniform(0, how.noise_sigma, b, 1, 1, 1) * (torch.rand(b, 1, 1, 1, device=dev) < 0.5)
        image = image + torch.randn_like(image) * sigma
    return image
