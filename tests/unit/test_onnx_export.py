"""The ONNX export written beside model.pt answers as PyTorch does, at any batch and size.

Sizes: export traces one 320 px tile; batch, height and width are dynamic axes, so a
batch of three 384 px windows (the served tile plus 64 px of context) and a 256 px one
must come back as PyTorch's within 1e-4 (the export's own check). A version without
model.onnx has no session, which is what makes the backend fall back to PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tilesight.model.export import ONNX, export_model, onnx_session
from tilesight.model.unet import SegmentationModel, UNetConfig

from .test_unet import _metadata


@pytest.mark.parametrize("activation,classes", [("sigmoid", 1), ("softmax", 3)])
def test_export_writes_an_onnx_model_with_pytorch_answers(
    tmp_path: Path, activation: str, classes: int
) -> None:
    torch.manual_seed(0)
    model = SegmentationModel(UNetConfig(width=4, depth=4, classes=classes, activation=activation))
    with torch.no_grad():  # trained BatchNorm statistics must survive ONNX's folding
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    model.train()  # export must not depend on the caller's mode
    version = export_model(model, _metadata(), tmp_path)
    assert (version / ONNX).is_file() and (version / "model.pt").is_file()
    session = onnx_session(version, threads=1)
    model.eval()
    rng = np.random.default_rng(1)
    for shape in ((3, 3, 384, 384), (1, 3, 256, 256)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        with torch.inference_mode():
            expected = model(torch.from_numpy(image)).numpy()
        (got,) = session.run(None, {"image": image})
        assert got.shape == expected.shape == (shape[0], classes, *shape[2:])
        assert np.abs(got - expected).max() <= 1e-4


def test_a_version_without_onnx_has_no_session(tmp_path: Path) -> None:
    version = export_model(SegmentationModel(UNetConfig(width=4, depth=4)), _metadata(), tmp_path)
    (version / ONNX).unlink()
    assert onnx_session(version) is None
