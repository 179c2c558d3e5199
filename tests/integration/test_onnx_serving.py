"""The building model served by Triton through ONNX Runtime gives PyTorch's answers.

Every committed demo version carries `model.onnx` beside `model.pt`; Triton's python
backend runs it with ONNX Runtime. A batch of real windows (two different tiles in one
request, so batching and the split back are exercised) must come back equal to the same
weights run by PyTorch in this process within TOL: Triton's output is fp16 (half a step
near 1 is 2.5e-4) and ONNX Runtime is checked against PyTorch to 1e-4 at export. A
version without `model.onnx` is still served, by PyTorch, with the same answers.
"""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
import torch

from tilesight.db import make_engine, make_sessionmaker
from tilesight.imagery.reader import read_tile
from tilesight.imagery.sources import get_source
from tilesight.model.export import ONNX, load_model
from tilesight.predict import context_px
from tilesight.registry import ensure_served, model_metadata, resolve_version
from tilesight.settings import Settings
from tilesight.stack import Stack
from tilesight.triton import TritonClient

MODEL = "buildings"
SOURCE = "tanzania"
TILES = [(319295, 270961, 19), (319296, 270962, 19)]  # imagery all round
TOL = 1e-3


@pytest.fixture(scope="module")
def windows(stack: Stack, settings: Settings) -> tuple[int, np.ndarray]:
    engine = make_engine(settings)
    with make_sessionmaker(engine)() as session:
        source = get_source(session, SOURCE)
        version = resolve_version(session, MODEL, None)
    engine.dispose()
    buffer = context_px(settings, model_metadata(settings, MODEL, version))
    reads = [read_tile(source, *t, tilesize=256, buffer=buffer, settings=settings) for t in TILES]
    batch = np.stack([r.data for r in reads])
    return version, batch


def pytorch(settings: Settings, version: int, batch: np.ndarray) -> np.ndarray:
    model, _ = load_model(settings.model_repo / MODEL / str(version))
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


def served(settings: Settings, model: str, version: int, batch: np.ndarray) -> np.ndarray:
    async def ask() -> np.ndarray:
        client = TritonClient(settings.triton_url, timeout_s=120)
        try:
            return await client.infer(model, batch, str(version))
        finally:
            await client.close()

    return asyncio.run(ask())


def runtime_logged(settings: Settings, model: str, version: int) -> str:
    """What the backend said it runs for this version (its initialize logs one line)."""
    lines = (settings.run_dir / "triton.log").read_text(errors="replace").splitlines()
    said = [ln for ln in lines if f"{model} v{version}: " in ln]
    assert said, f"no runtime line for {model} v{version} in triton.log"
    return said[-1].rsplit(": ", 1)[-1].strip().strip('"')


def test_every_demo_version_carries_its_onnx_export(settings: Settings) -> None:
    versions = sorted(p for p in (settings.model_repo / MODEL).iterdir() if p.name.isdigit())
    assert versions and all((v / ONNX).is_file() for v in versions)


def test_triton_serves_onnx_runtime_with_pytorch_answers(
    settings: Settings, windows: tuple[int, np.ndarray]
) -> None:
    version, batch = windows
    got = served(settings, MODEL, version, batch)
    expected = pytorch(settings, version, batch)
    classes = len(model_metadata(settings, MODEL, version)["classes"])
    assert got.shape == expected.shape == (2, classes, *batch.shape[2:])
    assert np.abs(got - expected).max() <= TOL
    assert not np.allclose(got[0], got[1])  # two tiles, two answers, in request order
    assert runtime_logged(settings, MODEL, version) == "onnxruntime"


def test_a_version_without_onnx_is_served_by_pytorch(
    settings: Settings, windows: tuple[int, np.ndarray]
) -> None:
    version, batch = windows
    name = "buildings-torch"
    ensure_served(settings, name)
    folder = settings.model_repo / name / "1"
    if not folder.exists():
        folder.mkdir()
        for part in ("model.pt", "metadata.json"):
            shutil.copy2(settings.model_repo / MODEL / str(version) / part, folder / part)
        (folder / "model.py").symlink_to("../model.py")

    async def load() -> None:
        client = TritonClient(settings.triton_url, timeout_s=120)
        try:
            await client.load_model(name)
        finally:
            await client.close()

    asyncio.run(load())
    got = served(settings, name, 1, batch)
    assert np.abs(got - pytorch(settings, version, batch)).max() <= TOL
    assert runtime_logged(settings, name, 1) == "torch"
