"""API keys, scopes, rate limits and body limits, on an app built against the real stack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tilesight.db import make_engine, make_sessionmaker, session_scope
from tilesight.keys import create_key, revoke_key
from tilesight.settings import Settings
from tilesight.stack import Stack


@pytest.fixture(scope="module")
def locked(stack: Stack) -> Iterator[TestClient]:
    """An app that needs keys everywhere but on tiles, with tight limits to hit in a test."""
    settings = stack.settings.model_copy(
        update={
            "auth_required": True,
            "max_body_bytes": 10_000,
            "rate_limits": {**stack.settings.rate_limits, "default": [5.0, 50.0]},
        }
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> dict[str, str]:
    sessions = make_sessionmaker(make_engine(stack.settings))
    made = {}
    with session_scope(sessions) as session:
        for name, scopes in {"admin": ["admin"], "reader": ["read"], "gone": ["read"]}.items():
            row, token = create_key(session, f"test-{name}", scopes)
            made[name] = token
        revoke_key(session, made["gone"].split("_")[1])
    return made


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_missing_key_is_401_with_what_to_send(locked: TestClient) -> None:
    response = locked.get("/keys")
    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["error"]


def test_keys_by_header_and_scope(locked: TestClient, tokens: dict[str, str]) -> None:
    assert locked.get("/keys", headers=bearer(tokens["admin"])).status_code == 200
    assert locked.get("/keys", headers={"X-API-Key": tokens["admin"]}).status_code == 200
    refused = locked.post("/keys", json={"name": "x"}, headers=bearer(tokens["reader"]))
    assert refused.status_code == 403
    assert "admin" in refused.json()["error"]


@pytest.mark.parametrize(
    ("token", "message"),
    [("ts_nope_nope", "unknown"), ("garbage", "malformed"), (None, "revoked")],
)
def test_bad_keys_are_401(
    locked: TestClient, tokens: dict[str, str], token: str | None, message: str
) -> None:
    response = locked.get("/keys", headers=bearer(token or tokens["gone"]))
    assert response.status_code == 401
    assert message in response.json()["error"]


def test_created_key_is_shown_once_and_stored_hashed(
    locked: TestClient, tokens: dict[str, str], stack: Stack
) -> None:
    created = locked.post(
        "/keys", json={"name": "ci", "scopes": ["read"]}, headers=bearer(tokens["admin"])
    )
    assert created.status_code == 201
    token = created.json()["token"]
    listed = locked.get("/keys", headers=bearer(tokens["admin"])).json()
    assert all("token" not in k and token not in str(k) for k in listed)
    bad = locked.post(
        "/keys", json={"name": "ci", "scopes": ["root"]}, headers=bearer(tokens["admin"])
    )
    assert bad.status_code == 400 and "scopes must be" in bad.json()["error"]


def test_rate_limit_answers_429_with_retry_after(stack: Stack) -> None:
    settings: Settings = stack.settings.model_copy(
        update={"rate_limits": {**stack.settings.rate_limits, "default": [0.2, 2.0]}}
    )
    with TestClient(create_app(settings), client=("10.1.2.3", 4000)) as client:
        assert [client.get("/keys").status_code for _ in range(2)] == [200, 200]
        limited = client.get("/keys")
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert "rate limit" in limited.json()["error"]


def test_oversized_body_is_413(locked: TestClient, tokens: dict[str, str]) -> None:
    response = locked.post(
        "/keys",
        content=b'{"name": "' + b"x" * 20_000 + b'"}',
        headers={**bearer(tokens["admin"]), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert "10000" in response.json()["error"]


def test_metrics_are_prometheus_text(api_url: str) -> None:
    import httpx

    httpx.get(f"{api_url}/healthz")
    text = httpx.get(f"{api_url}/metrics").text
    assert 'tilesight_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'tilesight_queue_depth{queue="gpu"}' in text
    assert 'tilesight_jobs{state="done"}' in text


def test_a_job_belongs_to_the_key_that_made_it(
    locked: TestClient, tokens: dict[str, str], stack: Stack
) -> None:
    import mercantile
    from shapely.geometry import box, mapping

    sessions = make_sessionmaker(make_engine(stack.settings))
    with session_scope(sessions) as session:
        _, mine = create_key(session, "test-owner", ["read", "submit"])
        _, theirs = create_key(session, "test-other", ["read", "submit"])
    tile = mercantile.Tile(315878, 264050, 19)  # one Nairobi demo chip
    aoi = mapping(box(*mercantile.bounds(tile)))
    created = locked.post("/jobs", json={"source": "nairobi", "aoi": aoi}, headers=bearer(mine))
    assert created.status_code == 202, created.text
    job = created.json()["id"]

    assert locked.get(f"/jobs/{job}", headers=bearer(mine)).status_code == 200
    for method, path in [("GET", f"/jobs/{job}"), ("POST", f"/jobs/{job}/cancel"),
                         ("GET", f"/jobs/{job}/buildings.geojson")]:  # fmt: skip
        response = locked.request(method, path, headers=bearer(theirs))
        assert response.status_code == 404, (method, path, response.text)
    listed = locked.get("/jobs", headers=bearer(theirs)).json()["items"]
    assert job not in [j["id"] for j in listed]
    assert job in [j["id"] for j in locked.get("/jobs", headers=bearer(mine)).json()["items"]]
    assert locked.get(f"/jobs/{job}", headers=bearer(tokens["admin"])).status_code == 200
    assert locked.post(f"/jobs/{job}/cancel", headers=bearer(mine)).status_code in (200, 409)
