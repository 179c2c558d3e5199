"""Training throughput of the demo configuration: samples/s for fp32 vs bf16 autocast and
channels_last on/off, side by side, on the CPU here (and on CUDA when there is one).

Run: .venv/bin/python bench/train.py [--threads 2] [--steps 6] [--width 8] [--depth 4]
Prints a table; numbers are for comparing settings on one machine, not across machines.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from tilesight.model.data import ChipDataset, ChipSpec, cache_chips
from tilesight.model.sources import ChipFolder, load_footprints, prepare_tiles
from tilesight.model.unet import SegmentationModel, UNetConfig
from tilesight.training.augment import augment
from tilesight.training.losses import segmentation_loss

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "buildings" / "tanzania"


def real_batch(batch_size: int, cache: Path) -> dict[str, torch.Tensor]:
    """A batch of real chips (repeated to the batch size) so the loss sees real labels."""
    spec = ChipSpec(zoom=19, buffer=32, jitter=32)
    reader, geoms = ChipFolder(DATA), load_footprints(DATA / "labels.geojson")
    chips = cache_chips(reader, geoms, prepare_tiles(reader, geoms, 19), spec, cache)
    chips = (chips * batch_size)[:batch_size]
    return next(iter(DataLoader(ChipDataset(chips, spec, train=True), batch_size=batch_size)))


def gpu_utilisation() -> str:
    try:
        return f"{torch.cuda.utilization()}%"
    except Exception:
        return "n/a"


def measure(device: str, bf16: bool, channels_last: bool, batch, args) -> tuple[float, str]:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = SegmentationModel(UNetConfig(width=args.width, depth=args.depth))
    model = model.to(device=device, memory_format=fmt).train()  # type: ignore[call-overload]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
    image, target = batch["image"].to(device), batch["target"].to(device)

    def step() -> None:
        im, tg = augment(image.clone(), target.clone())
        with autocast:
            loss = segmentation_loss(model(im.contiguous(memory_format=fmt), True), tg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    util = gpu_utilisation() if device.startswith("cuda") else "-"
    return args.steps * image.shape[0] / (time.perf_counter() - start), util


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--cache", type=Path, default=Path(".tilesight/bench-chips"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = real_batch(args.batch_size, args.cache)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(
        f"U-Net width {args.width} depth {args.depth}, batch {args.batch_size} x 3x320x320, "
        f"{args.steps} timed steps, torch {torch.__version__}, {args.threads} CPU threads"
    )
    print(f"{'device':8} {'precision':9} {'channels_last':13} {'samples/s':>10} {'GPU util':>9}")
    for device in devices:
        for bf16 in (False, True):
            for cl in (False, True):
                rate, util = measure(device, bf16, cl, batch, args)
                prec = "bf16" if bf16 else "fp32"
                print(f"{device:8} {prec:9} {str(cl):13} {rate:10.2f} {util:>9}")


if __name__ == "__main__":
    main()
