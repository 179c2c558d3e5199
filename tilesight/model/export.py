"""Model versions on disk: `model_repo/<model>/<N>/{model.pt, metadata.json}`.

Triton's python backend, the tests and `tilesight evaluate` all rebuild the served
module through `load_model`, so the weights file holds only a state_dict and the
metadata says how to build the module around it: no pickled classes, no code drift.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from tilesight.errors import InvalidInput, NotFound
from tilesight.model.unet import SegmentationModel, UNetConfig

WEIGHTS = "model.pt"
METADATA = "metadata.json"
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


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


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
    version = version or next_version(model_dir)
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


def latest_version(model_repo: Path, name: str = "buildings") -> Path:
    model_dir = Path(model_repo) / name
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise NotFound(f"model {name} has no versions in {model_repo}")
    return model_dir / str(max(versions))
