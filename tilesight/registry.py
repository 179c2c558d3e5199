"""Model versions: folders under model_repo/ on disk, rows in the database, models in Triton.

The folder is the truth for weights and metadata (Triton reads it), the database is the
truth for which version is promoted (the API reads it per request, so a promotion
switches every overlay at once without a restart), and Triton is asked to reload a
model whenever a new version folder appears.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tilesight.errors import NotFound
from tilesight.settings import PROJECT_ROOT, Settings
from tilesight.tables import Model, ModelVersion
from tilesight.triton import TritonClient
from tilesight.tritonserver import load_config

METADATA = "metadata.json"
BACKEND = "model.py"


def version_dirs(settings: Settings, model: str) -> dict[int, Path]:
    """Complete version folders (with metadata) of `model`, by version number."""
    model_dir = settings.model_repo / model
    found = {}
    for path in model_dir.glob("*"):
        if path.is_dir() and path.name.isdigit() and (path / METADATA).is_file():
            found[int(path.name)] = path
    return dict(sorted(found.items()))


def model_names(settings: Settings) -> list[str]:
    return sorted(p.parent.name for p in settings.model_repo.glob("*/config.pbtxt"))


@lru_cache(maxsize=64)
def _read_metadata(path: Path, mtime_ns: int) -> dict[str, Any]:
    return json.loads(path.read_text())


def model_metadata(settings: Settings, model: str, version: int) -> dict[str, Any]:
    """metadata.json of one version (cached until the file changes)."""
    path = settings.model_repo / model / str(int(version)) / METADATA
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError as exc:
        known = list(version_dirs(settings, model))
        raise NotFound(
            f"model {model!r} has no version {version} on disk", model=model, versions=known
        ) from exc
    return _read_metadata(path, mtime)


def link_backend(version_dir: Path) -> None:
    """Give a version folder its `model.py` (a link to the model's shared backend).

    Triton's python backend only looks for model.py inside the version folder, while
    an exported version holds just weights and metadata; one shared file keeps every
    version on the same serving code."""
    link = version_dir / BACKEND
    if not link.exists() and (version_dir.parent / BACKEND).is_file():
        link.symlink_to(Path("..") / BACKEND)


def ensure_served(settings: Settings, model: str) -> bool:
    """Give a model folder that a run has just created what Triton needs to serve it: a
    config.pbtxt carrying its name, and the python backend. Both come from the building
    model: the contract (uint8 image in, [B, C, H, W] probabilities out, C from
    metadata.json) and the backend are the same for any classes. True when written."""
    folder = settings.model_repo / model
    if (folder / "config.pbtxt").exists():
        return False
    template = settings.model_repo / "buildings"
    if not (template / "config.pbtxt").is_file():
        template = PROJECT_ROOT / "model_repo" / "buildings"
    text = (template / "config.pbtxt").read_text()
    config = re.sub(r'^name: ".*"$', f'name: "{model}"', text, count=1, flags=re.M)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template / BACKEND, folder / BACKEND)
    # the config last: a folder with one is a model to Triton and to sync_models
    tmp = folder / f".config.pbtxt.{uuid.uuid4().hex}"
    tmp.write_text(config)
    tmp.rename(folder / "config.pbtxt")
    return True


def sync_models(settings: Settings, session: Session) -> list[str]:
    """Register the versions found under model_repo/ and promote the newest where none is.

    Returns one line per change, so `tilesight up` can say what it did."""
    done: list[str] = []
    for name in model_names(settings):
        dirs = version_dirs(settings, name)
        row = session.get(Model, name)
        if row is None:
            row = Model(name=name, description="")
            session.add(row)
            done.append(f"model {name} registered")
        known = {
            v.version: v
            for v in session.scalars(select(ModelVersion).where(ModelVersion.model_name == name))
        }
        for version, path in dirs.items():
            link_backend(path)
            meta = model_metadata(settings, name, version)
            if version in known:
                known[version].meta = meta
                known[version].state = "available"
                continue
            session.add(ModelVersion(model_name=name, version=version, meta=meta))
            done.append(f"model {name} version {version} registered")
        for version, stale in known.items():
            if version not in dirs:
                stale.state = "missing"
        if dirs and (row.promoted_version is None or row.promoted_version not in dirs):
            row.promoted_version = max(dirs)
            done.append(f"model {name} version {row.promoted_version} promoted")
        if not row.description and dirs:
            latest = model_metadata(settings, name, max(dirs))
            row.description = str(latest.get("description", ""))[:1000]
    session.flush()
    return done


@dataclass(frozen=True)
class VersionInfo:
    version: int
    state: str  # available, or missing when its folder is gone
    promoted: bool
    created_at: datetime
    meta: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.meta.get("metrics") or {})


@dataclass(frozen=True)
class ModelInfo:
    """A model as the API and the CLI list it: its versions and which one is promoted."""

    name: str
    description: str
    promoted_version: int | None
    versions: list[VersionInfo]


def _info(session: Session, row: Model) -> ModelInfo:
    query = select(ModelVersion).where(ModelVersion.model_name == row.name)
    versions = [
        VersionInfo(v.version, v.state, v.version == row.promoted_version, v.created_at, v.meta)
        for v in session.scalars(query.order_by(ModelVersion.version))
    ]
    return ModelInfo(row.name, row.description, row.promoted_version, versions)


def list_models(session: Session) -> list[ModelInfo]:
    """Every registered model with its versions, by name."""
    return [_info(session, row) for row in session.scalars(select(Model).order_by(Model.name))]


def get_model(session: Session, name: str) -> ModelInfo:
    """One model with its versions, or NotFound naming the registered ones."""
    row = session.get(Model, name)
    if row is None:
        raise NotFound(f"no model named {name!r}", models=_names(session))
    return _info(session, row)


def _names(session: Session) -> list[str]:
    return list(session.scalars(select(Model.name).order_by(Model.name)))


def known_versions(session: Session, model: str) -> list[int]:
    query = (
        select(ModelVersion.version)
        .where(ModelVersion.model_name == model, ModelVersion.state == "available")
        .order_by(ModelVersion.version)
    )
    return list(session.scalars(query))


def resolve_version(session: Session, model: str, version: int | None) -> int:
    """The version to serve: the one asked for if it exists, else the promoted one."""
    row = session.get(Model, model)
    if row is None:
        raise NotFound(f"no model named {model!r}", models=_names(session))
    versions = known_versions(session, model)
    if version is None:
        if row.promoted_version is None or row.promoted_version not in versions:
            raise NotFound(f"model {model!r} has no promoted version", versions=versions)
        return row.promoted_version
    if version not in versions:
        raise NotFound(
            f"model {model!r} has no version {version}; use one of {versions}",
            versions=versions,
        )
    return version


def promote(session: Session, model: str, version: int) -> int:
    """Make `version` the default of `model`; returns the previously promoted version."""
    resolve_version(session, model, version)
    row = session.get(Model, model)
    assert row is not None  # resolve_version raised otherwise
    previous = row.promoted_version
    row.promoted_version = version
    session.flush()
    return previous if previous is not None else version


async def ensure_loaded(triton: TritonClient, model: str, settings: Settings | None = None) -> None:
    """Ask Triton to (re)load `model` so version folders that appeared since are served.

    Triton keeps serving the versions it has while the new ones load, and in explicit
    model-control mode this is how a trained version goes live without a restart."""
    config = None
    if settings is not None:
        for path in version_dirs(settings, model).values():
            link_backend(path)
        config = load_config(settings.model_repo / model)  # the instances `up` gave it
    await triton.load_model(model, config=config)
