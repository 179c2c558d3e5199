"""The model step in-process, side by side: PyTorch eager (as the backend ran it) against
ONNX Runtime fp32, and the reduced-precision variants tried on top of the same export.

Each variant runs the same real windows (the tiles the bench serves, with their context)
at one batch size, on the threads Triton's instance gets, and is judged against PyTorch
fp32 on those windows: tiles/s and its ratio to PyTorch measured in the same run, the
largest probability difference (the overlay's budget is 2/255), the share of pixels
that change side of the threshold, and the object F1 of its buildings against PyTorch's
(components >= 10 px, IoU >= 0.5; 1.0 = the same buildings; the budget is 0.01).

    from onnx_variants import compare_runtimes   # bench/predictions.py calls it
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tilesight.model.export import ONNX, load_model
from tilesight.model.metrics import label_components, match_objects

OVERLAY_TOL = 2 / 255
F1_TOL = 0.01
Runner = Callable[[np.ndarray], np.ndarray]


def variants(version_dir: Path, windows: np.ndarray, work: Path) -> dict[str, Path]:
    """ONNX files to compare: the export itself, fp16 weights and activations (inputs and
    outputs kept uint8/fp32), int8 dynamic and int8 static (QDQ, per-channel weights,
    calibrated on eight of the windows). bf16 is absent: ONNX Runtime's CPU provider has
    no bf16 convolution kernels, and this CPU has no AVX-512 BF16 or AMX to gain from."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp32 = version_dir / ONNX
    out = {"onnxruntime fp32": fp32}
    fp16 = work / "fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(fp32), keep_io_types=True), fp16)
    out["onnxruntime fp16"] = fp16
    pre = work / "pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    dynamic = work / "int8-dynamic.onnx"
    quantize_dynamic(str(pre), str(dynamic), weight_type=QuantType.QUInt8)
    out["onnxruntime int8 dynamic"] = dynamic

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": windows[i : i + 1]} for i in range(8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    static = work / "int8-static.onnx"
    quantize_static(
        str(pre), str(static), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    out["onnxruntime int8 static"] = static
    return out


def ort_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"image": batch})[0]


def torch_runner(version_dir: Path, threads: int) -> Runner:
    """PyTorch eager as the python backend ran it before ONNX: fp32, channels_last."""
    torch.set_num_threads(threads)
    model, _ = load_model(version_dir)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            return model(x).numpy()

    return run


def tiles_per_s(run: Runner, windows: np.ndarray, batch: int, seconds: float) -> float:
    run(windows[:batch])  # warm-up: first-call allocation and kernel choice
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        i = (done // batch * batch) % (len(windows) - batch + 1)
        run(windows[i : i + batch])
        done += batch
    return done / (time.perf_counter() - start)


def object_f1(pred: np.ndarray, ref: np.ndarray, threshold: float) -> float:
    tp = fp = fn = 0
    for p, r in zip(pred[:, 0], ref[:, 0], strict=True):
        a, b, c = match_objects(
            label_components(p >= threshold, 10), label_components(r >= threshold, 10)
        )
        tp, fp, fn = tp + a, fp + b, fn + c
    return 2 * tp / max(2 * tp + fp + fn, 1)


def compare_runtimes(
    version_dir: Path, windows: np.ndarray, threads: int, batch: int = 4, seconds: float = 6.0
) -> list[dict[str, Any]]:
    """One row per runtime, PyTorch eager first; each row's `vs_torch` is its tiles/s
    over PyTorch's, and `holds_accuracy` whether it keeps within both budgets."""
    threshold = 0.5
    reference = torch_runner(version_dir, threads)
    expected = np.concatenate([reference(windows[i : i + 1]) for i in range(len(windows))])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tilesight-onnx-") as work:
        runners = {"torch eager fp32": reference} | {
            name: ort_runner(path, threads)
            for name, path in variants(version_dir, windows, Path(work)).items()
        }
        for name, run in runners.items():
            got = np.concatenate(
                [run(windows[i : i + batch]) for i in range(0, len(windows), batch)]
            )
            diff = float(np.abs(got - expected).max())
            flipped = float(((got >= threshold) != (expected >= threshold)).mean())
            f1 = object_f1(got, expected, threshold)
            rows.append({
                "runtime": name,
                "tiles_per_s": round(tiles_per_s(run, windows, batch, seconds), 2),
                "max_abs_diff": round(diff, 6),
                "flipped_pixels": round(flipped, 6),
                "object_f1_vs_torch": round(f1, 4),
                "holds_accuracy": diff <= OVERLAY_TOL and f1 >= 1 - F1_TOL,
            })  # fmt: skip
            print(rows[-1], flush=True)
    base = rows[0]["tiles_per_s"]
    for row in rows:
        row["vs_torch"] = round(row["tiles_per_s"] / base, 2)
    return rows
