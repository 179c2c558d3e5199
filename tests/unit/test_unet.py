"""The U-Net's shapes, the served wrapper's contract, and export/load round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tilesight.errors import InvalidInput
from tilesight.model.export import ONNX, REQUIRED_KEYS, export_model, load_model, onnx_session
from tilesight.model.unet import NETWORKS, ResUNet, SegmentationModel, UNet, UNetConfig


@pytest.mark.parametrize(
    ("name", "width", "depth", "size"),
    [("unet", 4, 2, 64), ("unet", 8, 4, 320), ("unet", 4, 3, 96), ("resunet", 8, 5, 320),
     ("resunet", 8, 3, 72), ("resunet", 4, 6, 128)],
)  # fmt: skip
def test_networks_keep_spatial_size(name: str, width: int, depth: int, size: int) -> None:
    config = UNetConfig(name=name, width=width, depth=depth, classes=2)
    net = NETWORKS[name](config).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 2, size, size)


def test_config_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        UNetConfig(depth=0)
    with pytest.raises(ValueError):
        UNetConfig(activation="relu")
    with pytest.raises(ValueError, match="resunet"):
        UNetConfig(name="segformer")


def test_the_network_is_chosen_by_the_name_in_metadata() -> None:
    """Versions exported before networks had names keep loading as the U-Net."""
    old = UNetConfig.from_metadata({"architecture": {"width": 4, "depth": 2, "classes": 1}})
    assert isinstance(SegmentationModel(old).net, UNet)
    arch = UNetConfig(name="resunet", width=8, depth=5).architecture()
    assert isinstance(
        SegmentationModel(UNetConfig.from_metadata({"architecture": arch})).net, ResUNet
    )


def test_resunet_holds_more_parameters_for_about_the_unets_flops() -> None:
    """The point of the residual network: capacity per FLOP (the served demo pair)."""
    from torch.utils.flop_counter import FlopCounterMode

    def size(config: UNetConfig) -> tuple[int, int]:
        model = SegmentationModel(config).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, 320, 320, dtype=torch.uint8))
        return sum(p.numel() for p in model.parameters()), counter.get_total_flops()

    unet_params, unet_flops = size(UNetConfig(width=8, depth=4))
    res_params, res_flops = size(UNetConfig(name="resunet", width=24, depth=5, classes=2))
    assert res_params > 3 * unet_params
    assert res_flops < 1.5 * unet_flops


def test_resunet_exports_to_onnx_with_pytorch_answers(tmp_path: Path) -> None:
    """The served path (ONNX Runtime in Triton) must answer as PyTorch does, at every
    size the tiles come in: the decoder's resizes follow the input, not the traced size."""
    torch.manual_seed(0)
    model = SegmentationModel(UNetConfig(name="resunet", width=8, depth=5, classes=2))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    version = export_model(model, _metadata(), tmp_path)
    assert (version / ONNX).is_file()
    loaded, meta = load_model(version)
    assert meta["architecture"]["name"] == "resunet"
    session = onnx_session(version, threads=1)
    rng = np.random.default_rng(1)
    for shape in ((3, 3, 384, 384), (1, 3, 256, 256)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        with torch.inference_mode():
            expected = loaded(torch.from_numpy(image)).numpy()
        (got,) = session.run(None, {"image": image})
        assert got.shape == expected.shape == (shape[0], 2, *shape[2:])
        assert np.abs(got - expected).max() <= 1e-4


def test_wrapper_takes_uint8_and_returns_probabilities() -> None:
    model = SegmentationModel(UNetConfig(width=4, depth=2)).eval()
    image = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        prob = model(image)
        logits = model(image, return_logits=True)
    assert prob.shape == (1, 1, 64, 64) and prob.dtype == torch.float32
    assert prob.min() >= 0 and prob.max() <= 1
    assert torch.allclose(prob, torch.sigmoid(logits))


def test_softmax_classes_sum_to_one() -> None:
    model = SegmentationModel(UNetConfig(width=4, depth=2, classes=4, activation="softmax"))
    with torch.no_grad():
        prob = model.eval()(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert torch.allclose(prob.sum(dim=1), torch.ones(2, 32, 32), atol=1e-5)


def _metadata() -> dict:
    return {
        "classes": [{"name": "building", "color": "#ff3b30"}],
        "zoom": 19,
        "tile_size": 256,
        "buffer": 32,
        "threshold": 0.5,
        "metrics": {"pixel_iou": 0.5},
        "training_data": {"sources": []},
        "split": {},
    }


def test_export_then_load_gives_the_same_outputs(tmp_path: Path) -> None:
    model = SegmentationModel(UNetConfig(width=4, depth=3)).eval()
    with torch.no_grad():  # non-default BatchNorm statistics must survive the trip
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
    first = export_model(model, _metadata(), tmp_path)
    second = export_model(model, _metadata(), tmp_path)
    assert (first.name, second.name) == ("1", "2")
    loaded, meta = load_model(second)
    assert not loaded.training
    assert set(REQUIRED_KEYS) <= set(meta) and meta["version"] == 2
    assert meta["architecture"] == {
        "name": "unet", "in_channels": 3, "classes": 1, "width": 4, "depth": 3,
        "activation": "sigmoid",
    }  # fmt: skip
    assert json.loads((second / "metadata.json").read_text())["normalization"]["std"]
    image = torch.randint(0, 256, (2, 3, 320, 320), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(image), loaded(image))


def test_export_refuses_sizes_the_unet_cannot_take(tmp_path: Path) -> None:
    model = SegmentationModel(UNetConfig(width=4, depth=4))
    with pytest.raises(InvalidInput, match="multiple of 16"):
        export_model(model, {**_metadata(), "buffer": 30}, tmp_path)


def test_demo_model_loads_and_meets_the_contract() -> None:
    version = Path(__file__).resolve().parents[2] / "model_repo" / "buildings" / "1"
    if not (version / "model.pt").exists():
        pytest.skip("demo model not exported yet")
    model, meta = load_model(version)
    size = meta["tile_size"] + 2 * meta["buffer"]
    with torch.no_grad():
        out = model(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    assert out.shape == (1, len(meta["classes"]), size, size)
    assert {"object_f1", "pixel_iou", "baselines"} <= set(meta["metrics"])
