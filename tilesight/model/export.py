"""Writing and loading model versions (the layout: tilesight.model.repository).

Triton's python backend, the tests and `tilesight evaluate` all rebuild the served
module through `load_model`, so the weights file holds only a state_dict and the
metadata says how to build the module around it: no pickled classes, no code drift.
`model.onnx` is the same module traced once at export (uint8 in, probabilities out,
batch, height and width free); the backend serves it through ONNX Runtime, 1.1-1.4x
PyTorch eager on a quiet CPU (bench/README.md), and a version without one is served by
PyTorch.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from tilesight.errors import InvalidInput, NotFound
from tilesight.model.repository import METADATA, ONNX, WEIGHTS, next_version
from tilesight.model.unet import SegmentationModel, UNetConfig

ONNX_OPSET = 17
#: ONNX Runtime against PyTorch on the same uint8 batch; the export is refused beyond
#: this (the overlay's own tolerance is 2/255, the served output is fp16 anyway).
ONNX_TOLERANCE = 1e-4
REQUIRED_KEYS = (
    "name", "version", "architecture", "classes", "zoom", "tile_size", "buffer",
    "normalization", "threshold", "metrics", "training_data", "split", "code_version",
    "created_at",
)  # fmt: skip


def code_version(repo: Path | None = None) -> str:
    """The git commit the code ran from, so a version can be traced back; 'unknown'
    outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=repo or Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def export_model(
    model: SegmentationModel,
    metadata: dict[str, Any],
    model_repo: Path,
    name: str = "buildings",
    version: int | None = None,
) -> Path:
    """Write a new integer version folder and return it.

    The folder is assembled under a temporary name and renamed into place, so Triton
    polling the repository never sees a version without its weights or metadata."""
    model_dir = Path(model_repo) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or next_version(Path(model_repo), name)
    final = model_dir / str(version)
    if final.exists():
        raise InvalidInput(f"{final} already exists; versions are never overwritten")
    size = metadata["tile_size"] + 2 * metadata["buffer"]
    if size % model.config.multiple:
        raise InvalidInput(
            f"tile_size + 2*buffer = {size} is not a multiple of {model.config.multiple} "
            f"(2**depth); change the buffer"
        )
    meta = {
        **metadata,
        "name": name,
        "version": version,
        "architecture": model.config.architecture(),
        "normalization": {"mean": list(model.config.mean), "std": list(model.config.std)},
        "code_version": metadata.get("code_version") or code_version(),
        "created_at": metadata.get("created_at") or datetime.now(UTC).isoformat(),
    }
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise InvalidInput(f"metadata lacks {', '.join(missing)}")
    tmp = model_dir / f".{version}.tmp-{os.getpid()}"
    tmp.mkdir()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, tmp / WEIGHTS)
    (tmp / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
    try:
        export_onnx(model, tmp, size)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(final)
    return final


def read_metadata(version_dir: Path) -> dict[str, Any]:
    path = Path(version_dir) / METADATA
    if not path.is_file():
        raise NotFound(f"no model version at {version_dir} (missing {METADATA})")
    return json.loads(path.read_text())


def load_model(
    version_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[SegmentationModel, dict[str, Any]]:
    """The served module (uint8 in, probabilities out) in eval mode, and its metadata."""
    version_dir = Path(version_dir)
    metadata = read_metadata(version_dir)
    model = SegmentationModel(UNetConfig.from_metadata(metadata))
    state = torch.load(version_dir / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device).eval(), metadata


def export_onnx(model: torch.nn.Module, version_dir: Path, size: int | None = None) -> Path:
    """Write `model.onnx` beside `model.pt`, checked against PyTorch before it is kept.

    Traced on a CPU copy in eval mode (training may hand over a GPU or train-mode
    module); batch, height and width stay dynamic so one file serves any tile size and
    Triton's batches. ONNX Runtime then runs it on a random batch of two and the file is
    refused (InvalidInput) if it strays from PyTorch by more than ONNX_TOLERANCE."""
    import numpy as np
    import onnxruntime as ort

    version_dir = Path(version_dir)
    if size is None:
        meta = read_metadata(version_dir)
        size = int(meta["tile_size"]) + 2 * int(meta["buffer"])
    module = copy.deepcopy(model).cpu().float().eval()
    example = torch.zeros((1, 3, size, size), dtype=torch.uint8)
    tmp = version_dir / f".{ONNX}.tmp-{os.getpid()}"
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(tmp), input_names=["image"],
            output_names=["probability"], opset_version=ONNX_OPSET,
            dynamic_axes={"image": axes, "probability": axes}, dynamo=False,
        )  # fmt: skip
    check = np.random.default_rng(0).integers(0, 256, (2, 3, size, size), dtype=np.uint8)
    with torch.inference_mode():
        expected = module(torch.from_numpy(check)).numpy()
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": check})[0]
    error = float(np.abs(got - expected).max())
    if error > ONNX_TOLERANCE:
        tmp.unlink()
        raise InvalidInput(
            f"the ONNX export differs from PyTorch by {error:.2g} (> {ONNX_TOLERANCE}); "
            "the version was not written: the model holds a layer the ONNX export does "
            "not reproduce"
        )
    tmp.rename(version_dir / ONNX)
    return version_dir / ONNX


def onnx_session(version_dir: str | Path, threads: int = 0) -> Any | None:
    """An ONNX Runtime session for the version's `model.onnx`, or None where the version
    has none (older versions are then served by PyTorch). `threads` 0 lets ONNX Runtime
    take every core; a Triton instance is given its share (tilesight.tritonserver)."""
    path = Path(version_dir) / ONNX
    if not path.is_file():
        return None
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # threads sleep between runs instead of spinning: Triton's other instances and the
    # workers share the cores (batch 8 on the shared 2-core machine: 10.3 vs 9.3 tiles/s)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
