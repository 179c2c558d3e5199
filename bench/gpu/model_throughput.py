"""Raw U-Net throughput (tiles/s) by batch size and precision, and the fraction of the
device's dense peak it reaches, from the model's own FLOP count.

    python bench/gpu/model_throughput.py [--device cuda] [--out results.json]

Runs on CPU too (fp32 and bf16), so the runner is tested where no GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from tilesight.model.export import load_model
from tilesight.model.repository import latest_version
from tilesight.settings import PROJECT_ROOT

# Dense (no sparsity) bf16/fp16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets.
PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0,
               "A100": 312.0, "L40S": 362.0, "L4": 121.0}  # fmt: skip


def peak_for(name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if all(part in name for part in key.split()):
            return value
    if "H100" in name:
        return PEAK_TFLOPS["H100 SXM"]
    return None


def flops_per_tile(model: torch.nn.Module, size: int) -> int:
    x = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.cpu()(x)
    return int(counter.get_total_flops())


def measure(model: torch.nn.Module, device: torch.device, size: int, batch: int, dtype: torch.dtype,
            channels_last: bool, seconds: float) -> float:  # fmt: skip
    m = model.to(device)
    m = m.to(memory_format=torch.channels_last) if channels_last else m  # type: ignore[call-overload]
    x = torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode(), autocast:
        for _ in range(3):
            m(x)
        sync()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            m(x)
            n += 1
        sync()
        elapsed = time.perf_counter() - start
    return n * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-repo", type=Path, default=PROJECT_ROOT / "model_repo")
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    device = torch.device(args.device)
    model, meta = load_model(latest_version(args.model_repo))
    size = meta["tile_size"] + 2 * meta["buffer"]
    flops = flops_per_tile(model, size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    peak = peak_for(name) if device.type == "cuda" else None
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if device.type == "cuda":
        dtypes["fp16"] = torch.float16
    rows = []
    for label, dtype in dtypes.items():
        for channels_last in (False, True):
            for batch in [int(b) for b in args.batches.split(",")]:
                tiles_s = measure(model, device, size, batch, dtype, channels_last, args.seconds)
                tflops = tiles_s * flops / 1e12
                row = {"dtype": label, "channels_last": channels_last, "batch": batch,
                       "tiles_per_s": round(tiles_s, 1), "tflops": round(tflops, 3),
                       "fraction_of_peak": round(tflops / peak, 4) if peak else None}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: float(r["tiles_per_s"] or 0))
    result = {
        "device": name, "input": [3, size, size], "model": meta.get("architecture"),
        "gflops_per_tile": round(flops / 1e9, 3), "peak_tflops_dense_bf16": peak,
        "best": best, "rows": rows,
    }  # fmt: skip
    print(f"best: {best['tiles_per_s']} tiles/s ({best['dtype']}, batch {best['batch']}, "
          f"channels_last={best['channels_last']}); {flops / 1e9:.2f} GFLOP/tile"
          + (f"; {best['fraction_of_peak']:.1%} of {peak} TFLOP/s" if peak else ""))  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
