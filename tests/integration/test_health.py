"""/healthz and /readyz against the real stack, including a component going away and back."""

from __future__ import annotations

import time

import httpx
import pytest

from tilesight.stack import Stack


def wait_for_status(url: str, status: int, timeout_s: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(url, timeout=10)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def test_healthz_and_readyz_ok(api_url: str) -> None:
    assert httpx.get(f"{api_url}/healthz").json() == {"status": "ok"}
    response = httpx.get(f"{api_url}/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["components"] == {"postgres": "ok", "redis": "ok", "triton": "ok"}
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("component", ["redis", "postgres"])
def test_readyz_names_a_stopped_component_and_recovers(
    stack: Stack, api_url: str, component: str
) -> None:
    stack.stop_component(stack.component(component))
    try:
        response = wait_for_status(f"{api_url}/readyz", 503)
        assert response.status_code == 503
        body = response.json()
        assert body["components"][component].startswith("down")
        others = {k: v for k, v in body["components"].items() if k != component}
        assert all(v == "ok" for v in others.values()), body
    finally:
        stack.start_component(stack.component(component))
    response = wait_for_status(f"{api_url}/readyz", 200)
    assert response.status_code == 200, response.text


def test_unknown_route_is_json_404(api_url: str) -> None:
    response = httpx.get(f"{api_url}/no/such/thing")
    assert response.status_code == 404
    assert "error" in response.json()


def test_openapi_describes_every_route(api_url: str) -> None:
    spec = httpx.get(f"{api_url}/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            assert op.get("summary") or op.get("description"), f"{method.upper()} {path}"
    assert httpx.get(f"{api_url}/docs").status_code == 200
