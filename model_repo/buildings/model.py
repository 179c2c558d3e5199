"""Triton python backend for the building U-Net: one instance per served version.

The stub embeds its own interpreter and ignores PYTHONPATH, so the project's
site-packages come from TILESIGHT_SITE_PACKAGES (set by `tilesight.stack`). Tensors
cross the backend boundary through DLPack only: with this Triton build `as_numpy()`
handed the model wrong pixels and numpy outputs arrived empty (see shared GPU.md).
The module is rebuilt by `tilesight.model.export.load_model`, the same function the
tests and the training code use, so served and tested weights cannot drift apart.

On CPU a version folder holding `model.onnx` (written by `export_model` beside
model.pt) runs through ONNX Runtime: the same graph with BatchNorm folded and fused
kernels, 1.1-1.4x PyTorch eager in process on a quiet 2-core machine and more on the
larger windows of tile blocks (bench/README.md), equal to it within 1e-4. A version
without one, or a GPU instance, runs PyTorch. Each instance gets
TILESIGHT_MODEL_THREADS threads (`tilesight.tritonserver` sizes them from the cores).
"""

from __future__ import annotations

import json
import os
import site

for _path in os.environ.get("TILESIGHT_SITE_PACKAGES", "").split(os.pathsep):
    if _path:
        site.addsitedir(_path)

import torch  # noqa: E402
import torch.utils.dlpack  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from tilesight.model.export import load_model, onnx_session  # noqa: E402


class TritonPythonModel:
    """Batches the requests Triton groups, runs them in one forward pass, splits them back."""

    def initialize(self, args: dict[str, str]) -> None:
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        gpu = args.get("model_instance_kind") == "GPU"
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if gpu else "cpu")
        threads = int(os.environ.get("TILESIGHT_MODEL_THREADS", "0") or 0)
        if threads and not gpu:
            torch.set_num_threads(threads)
        self.session = None if gpu else onnx_session(version_dir, threads)
        self.runtime = "onnxruntime" if self.session is not None else "torch"
        pb_utils.Logger.log_info(f"{args['model_name']} v{args['model_version']}: {self.runtime}")
        self.model, self.metadata = load_model(version_dir, device=self.device)
        # channels_last: 1.7-2x the fp32 tiles/s on CPU (bench/RESULTS.md), and what
        # tensor cores want on a GPU
        self.model = self.model.to(memory_format=torch.channels_last)
        self.autocast = gpu
        config = json.loads(args["model_config"])
        self.output_name = config["output"][0]["name"]
        self.input_name = config["input"][0]["name"]

    def execute(self, requests: list) -> list:
        images, sizes = [], []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
            image = torch.from_dlpack(tensor.to_dlpack())
            images.append(image)
            sizes.append(image.shape[0])
        # Requests of one batch share H and W (Triton groups equal shapes only), but a
        # mixed batch is still answered correctly by running each shape on its own.
        shapes = {tuple(image.shape[1:]) for image in images}
        if len(shapes) == 1:
            outputs = self._run(torch.cat(images)).split(sizes)
        else:
            outputs = [self._run(image) for image in images]
        responses = []
        for output in outputs:
            tensor = pb_utils.Tensor.from_dlpack(
                self.output_name, torch.utils.dlpack.to_dlpack(output.contiguous())
            )
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    @torch.inference_mode()
    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        if self.session is not None:
            # one window at a time: on CPU a batch is no faster per window, and 32 windows
            # of a block at once spill the caches (bench/predictions.py, concurrency 32)
            return torch.cat([
                torch.from_numpy(self.session.run(None, {"image": one.numpy()})[0]).half()
                for one in batch.contiguous().split(1)
            ])  # fmt: skip
        batch = batch.to(self.device, non_blocking=True)
        batch = batch.contiguous(memory_format=torch.channels_last)
        if self.autocast:
            with torch.autocast("cuda", dtype=torch.float16):
                return self.model(batch).half()
        return self.model(batch).half()

    def finalize(self) -> None:
        del self.model, self.session
