"""The one Triton client the API and the workers share: async gRPC, reused, with timeouts.

A connection is made once per process and kept; each call carries a deadline so a
stalled Triton turns into `Unavailable` (a 503 with Retry-After) within a second or
two instead of a hung request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from tilesight.errors import NotFound, Unavailable

T = TypeVar("T")


class TritonClient:
    """Async client for Triton's gRPC endpoint: inference, liveness, statistics, (re)loads."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client: grpcclient.InferenceServerClient | None = None

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(
                self.url,
                channel_args=[
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                    # a restarted Triton is found again within a second or two, not
                    # after gRPC's default reconnect backoff of up to two minutes
                    ("grpc.initial_reconnect_backoff_ms", 250),
                    ("grpc.min_reconnect_backoff_ms", 250),
                    ("grpc.max_reconnect_backoff_ms", 2000),
                ],
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def is_live(self, timeout_s: float = 1.0) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.is_server_live(), timeout=timeout_s))
        except (InferenceServerException, TimeoutError, OSError):
            return False

    async def infer(
        self,
        model: str,
        image: np.ndarray,
        version: str = "",
        input_name: str = "image",
        output_name: str = "probability",
    ) -> np.ndarray:
        """Run `image` (uint8 [B, 3, H, W]) through `model`; returns [B, C, H, W] float32."""
        inp = grpcclient.InferInput(input_name, list(image.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(image, dtype=np.uint8))
        out = grpcclient.InferRequestedOutput(output_name)
        try:
            result = await self.client.infer(
                model,
                [inp],
                model_version=version,
                outputs=[out],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise _translate(exc, model, version) from exc
        except OSError as exc:
            raise Unavailable(f"Triton is unreachable: {exc}") from exc
        array = result.as_numpy(output_name)
        if array is None:
            raise Unavailable(f"Triton returned no '{output_name}' for {model}")
        return array.astype(np.float32, copy=False)

    async def inference_statistics(self, model: str, version: str = "") -> dict:
        """Triton's counters for `model`: requests (inference_count) and model runs
        (execution_count) per version, which is how batching and single flight show."""
        return await self._ask(
            self.client.get_inference_statistics(model, version, as_json=True), model, version
        )

    async def _ask(self, call: Awaitable[T], model: str, version: str) -> T:
        """One question to Triton's control plane, bounded by the client's timeout, with
        its errors translated into what the API answers (404, 503)."""
        try:
            return await asyncio.wait_for(call, timeout=self.timeout_s)
        except TimeoutError as exc:
            raise Unavailable(f"Triton did not answer within {self.timeout_s}s") from exc
        except InferenceServerException as exc:
            raise _translate(exc, model, version) from exc

    async def load_model(self, model: str, config: str | None = None) -> None:
        """(Re)load `model`; `config` (Triton's JSON model config) overrides its
        config.pbtxt, e.g. the instance count of `tilesight.tritonserver.config_override`."""
        try:
            await self.client.load_model(
                model, config=config, client_timeout=max(self.timeout_s, 120.0)
            )
        except InferenceServerException as exc:
            raise _translate(exc, model, "") from exc


def _translate(exc: InferenceServerException, model: str, version: str) -> Exception:
    text = str(exc)
    status = (exc.status() or "").upper()
    if "DEADLINE" in status or "Deadline" in text:
        return Unavailable("Triton did not answer in time", retry_after=1)
    if "UNAVAILABLE" in status or "failed to connect" in text.lower():
        return Unavailable("Triton is unreachable", retry_after=2)
    if "not found" in text.lower() or "unknown model" in text.lower():
        return NotFound(f"model {model!r} version {version or 'default'} is not served by Triton")
    if "not ready" in text.lower() or "loading" in text.lower():
        return Unavailable(f"model {model!r} is loading", retry_after=2)
    return Unavailable(f"Triton failed: {text}", retry_after=1)
