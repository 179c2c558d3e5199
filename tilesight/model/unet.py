"""The segmentation networks the project trains and serves, registered by name, and their
config.

`config.name` picks the network from `NETWORKS`, and metadata.json stores it under
`architecture`, so a version trained with one network keeps loading after another is
added. Width and depth are parameters so the same code gives a model small enough to run
on a laptop CPU and a wider one for GPU training; nothing here reads files or knows about
training, so export, the Triton backend and the tests all build it the same way.

- `unet`: the original U-Net, full resolution at every level (2.4 GFLOP at 320 px, width 8).
- `resunet`: a residual encoder behind a stride-2 stem, a global-context bottleneck and a
  light additive decoder. Skipping the full-resolution encoder level, where a U-Net spends
  most of its FLOPs, buys about 5x the parameters for about the same CPU time; a thin
  full-resolution refinement on the input pixels keeps the 2 px border class sharp.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

#: ImageNet-like statistics on a 0-1 scale; aerial RGB is close enough, and the values
#: travel in the model metadata so a retrained model can carry its own.
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)


@dataclass
class UNetConfig:
    """Shape of a U-Net; `asdict(config)` is what metadata.json stores as `architecture`."""

    name: str = "unet"
    in_channels: int = 3
    classes: int = 1
    width: int = 16
    depth: int = 4
    activation: str = "sigmoid"  # "sigmoid" (independent classes) or "softmax" (exclusive)
    mean: tuple[float, ...] = field(default=DEFAULT_MEAN)
    std: tuple[float, ...] = field(default=DEFAULT_STD)

    def __post_init__(self) -> None:
        if self.name not in NETWORKS:
            raise ValueError(f"architecture must be one of {sorted(NETWORKS)}, got {self.name!r}")
        if not 1 <= self.depth <= 6:
            raise ValueError(f"depth must be 1..6, got {self.depth}")
        if not 4 <= self.width <= 256:
            raise ValueError(f"width must be 4..256, got {self.width}")
        if self.activation not in {"sigmoid", "softmax"}:
            raise ValueError("activation must be 'sigmoid' or 'softmax'")
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this (one halving per level)."""
        return 2**self.depth

    def architecture(self) -> dict[str, Any]:
        """The `architecture` entry of metadata.json (normalisation is stored apart)."""
        data = asdict(self)
        data.pop("mean")
        data.pop("std")
        return data

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> UNetConfig:
        arch = dict(metadata["architecture"])
        norm = metadata.get("normalization", {})
        return cls(
            **arch,
            mean=tuple(norm.get("mean", DEFAULT_MEAN)),
            std=tuple(norm.get("std", DEFAULT_STD)),
        )


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Encoder-decoder with skip connections; returns logits of shape [B, classes, H, W]."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        chans = [config.width * 2**i for i in range(config.depth + 1)]
        self.encoder = nn.ModuleList(
            [_block(config.in_channels, chans[0])]
            + [_block(chans[i], chans[i + 1]) for i in range(config.depth)]
        )
        self.up = nn.ModuleList(
            [nn.Conv2d(chans[i + 1], chans[i], 1) for i in reversed(range(config.depth))]
        )
        self.decoder = nn.ModuleList(
            [_block(2 * chans[i], chans[i]) for i in reversed(range(config.depth))]
        )
        self.head = nn.Conv2d(chans[0], config.classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, block in zip(self.up, self.decoder, strict=True):
            x = up(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen while fine-tuning from an earlier version (transfer learning)."""
        return list(self.encoder.parameters())


class _Residual(nn.Module):
    """Two 3x3 convolutions with an identity (or strided 1x1) shortcut: ResNet's basic block."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


#: channels of each level of `resunet`, as multiples of `width` (stem level first)
RESUNET_CHANNELS = (1, 2, 4, 6, 10, 14)


class ResUNet(nn.Module):
    """Residual encoder-decoder; logits [B, classes, H, W] like `UNet`.

    `depth` counts halvings, the stem's included, so `config.multiple` holds for both
    networks. Each decoder level narrows to the skip's channels at the coarse resolution
    (1x1), upsamples, adds the skip and runs one 3x3 convolution: narrowing first and adding
    rather than concatenating keep the high-resolution levels cheap. The bottleneck adds a
    global-average context vector: a whole-tile cue for telling a flat grey roof from a
    road when the tile is all grey.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        chans = [config.width * m for m in RESUNET_CHANNELS[: config.depth]]
        self.stem = _conv(config.in_channels, chans[0], stride=2)
        self.encoder = nn.ModuleList(
            [_conv(chans[0], chans[0])]
            + [_Residual(chans[i], chans[i + 1], stride=2) for i in range(config.depth - 1)]
        )
        self.context = nn.Sequential(nn.Conv2d(chans[-1], chans[-1], 1), nn.ReLU(inplace=True))
        self.reduce = nn.ModuleList(
            [nn.Conv2d(chans[i + 1], chans[i], 1) for i in reversed(range(config.depth - 1))]
        )
        self.fuse = nn.ModuleList(
            [_conv(chans[i], chans[i]) for i in reversed(range(config.depth - 1))]
        )
        fine = max(config.width // 2, 8)
        self.refine = _conv(chans[0] + config.in_channels, fine)
        self.head = nn.Conv2d(fine, config.classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x
        skips = []
        x = self.stem(x)
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        skips.pop()
        x = x + self.context(x.mean(dim=(2, 3), keepdim=True))
        for reduce, fuse in zip(self.reduce, self.fuse, strict=True):
            skip = skips.pop()
            x = F.interpolate(reduce(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(x + skip)
        x = F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.refine(torch.cat([x, image], dim=1)))

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen while fine-tuning from an earlier version (transfer learning)."""
        return [*self.stem.parameters(), *self.encoder.parameters(), *self.context.parameters()]


#: network classes by the name metadata.json stores; add, never rename
NETWORKS: dict[str, type[nn.Module]] = {"unet": UNet, "resunet": ResUNet}


class SegmentationModel(nn.Module):
    """What Triton serves: uint8 RGB [B, 3, H, W] in, per-class probability [B, C, H, W] out.

    Normalising and the final activation live inside `forward` so the TorchScript/ONNX
    export and the python backend share one contract and no caller can forget a step.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.net = NETWORKS[config.name](config)
        mean = torch.tensor(config.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(config.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0-255 float) pixels to the network's input scale."""
        return (image.float() - self.mean) / self.std

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(image))

    def forward(self, image: torch.Tensor, return_logits: bool = False) -> torch.Tensor:
        logits = self.logits(image)
        if return_logits:  # training goes through forward so DDP and compile hooks run
            return logits
        logits = logits.float()
        if self.config.activation == "softmax":
            return torch.softmax(logits, dim=1)
        return torch.sigmoid(logits)
