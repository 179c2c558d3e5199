"""The layout of the model repository, in one place: `<repo>/<model>/<N>/` holds a
version's `model.pt` (a state_dict), `metadata.json` (how to rebuild and read it) and
`model.onnx` (what Triton serves). A version folder counts once its metadata is there:
export assembles it under a temporary name and renames it into place.

Torch-free, so the API and the registry read the layout without loading a model.
"""

from __future__ import annotations

from pathlib import Path

from tilesight.errors import NotFound

WEIGHTS = "model.pt"
METADATA = "metadata.json"
ONNX = "model.onnx"


def version_dir(model_repo: Path, model: str, version: int) -> Path:
    """The folder of one version (which may not exist yet)."""
    return Path(model_repo) / model / str(int(version))


def version_dirs(model_repo: Path, model: str) -> dict[int, Path]:
    """Complete version folders (with metadata) of `model`, by version number."""
    found = {}
    for path in (Path(model_repo) / model).glob("*"):
        if path.is_dir() and path.name.isdigit() and (path / METADATA).is_file():
            found[int(path.name)] = path
    return dict(sorted(found.items()))


def next_version(model_repo: Path, model: str) -> int:
    """The number a new version takes: one above every numbered folder, complete or not
    (a half-written folder's number is never reused)."""
    folder = Path(model_repo) / model
    taken = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(taken, default=0) + 1


def latest_version(model_repo: Path, model: str = "buildings") -> Path:
    """The newest complete version folder of `model`."""
    versions = version_dirs(model_repo, model)
    if not versions:
        raise NotFound(f"model {model} has no versions in {model_repo}")
    return versions[max(versions)]
