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


def test_a_foreign_host_header_is_refused(api_url: str) -> None:
    """DNS rebinding: a page on attacker.example resolving to 127.0.0.1 reaches the API
    with its own name in Host, and must get nothing."""
    import httpx

    refused = httpx.get(f"{api_url}/sources", headers={"Host": "attacker.example"})
    assert refused.status_code == 400
    assert refused.json()["detail"]["host"] == "attacker.example"
    assert "TILESIGHT_ALLOWED_HOSTS" in refused.json()["error"]
    port = api_url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(f"{api_url}/sources", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("path", ["/", "/js/main.js", "/healthz", "/sources", "/nope"])
def test_security_headers_on_the_viewer_and_the_api(api_url: str, path: str) -> None:
    import httpx

    response = httpx.get(f"{api_url}{path}")
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
    assert "http" not in csp  # no outside origin for the viewer
    assert "server" not in headers  # uvicorn's banner is off


def test_forwarded_for_is_trusted_only_from_configured_proxies(stack: Stack) -> None:
    """A client naming a fresh X-Forwarded-For per request must not get a fresh budget;
    a configured proxy's X-Forwarded-For does name the client."""
    limits = {**stack.settings.rate_limits, "default": [0.01, 2.0]}
    untrusted = stack.settings.model_copy(update={"rate_limits": limits})
    with TestClient(create_app(untrusted), client=("10.9.8.7", 4000)) as client:
        codes = [
            client.get("/keys", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
            for i in range(3)
        ]
        assert codes == [200, 200, 429]
    trusted = untrusted.model_copy(update={"trusted_proxies": ["10.9.8.6"]})
    with TestClient(create_app(trusted), client=("10.9.8.6", 4000)) as client:
        codes = [
            client.get("/keys", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
            for i in range(10, 13)
        ]
        assert codes == [200, 200, 200]  # three clients behind the proxy, one bucket each


def test_keys_minted_while_keys_are_off_are_marked(
    locked: TestClient, tokens: dict[str, str], stack: Stack
) -> None:
    with TestClient(create_app(stack.settings)) as open_app:  # auth off: caller is admin
        minted = open_app.post("/keys", json={"name": "test-open", "scopes": ["read"]})
    assert minted.status_code == 201 and minted.json()["minted_anonymously"] is True
    made = locked.post("/keys", json={"name": "test-locked"}, headers=bearer(tokens["admin"]))
    assert made.json()["minted_anonymously"] is False
    listed = {k["name"]: k for k in locked.get("/keys", headers=bearer(tokens["admin"])).json()}
    assert listed["test-open"]["minted_anonymously"] is True
    # still valid once keys are on: which is why it is marked
    token = minted.json()["token"]
    assert locked.get("/sources", headers=bearer(token)).status_code == 200


def test_a_training_run_belongs_to_the_key_that_made_it(
    locked: TestClient, tokens: dict[str, str], stack: Stack
) -> None:
    sessions = make_sessionmaker(make_engine(stack.settings))
    with session_scope(sessions) as session:
        _, mine = create_key(session, "test-run-owner", ["read", "submit"])
        _, theirs = create_key(session, "test-run-other", ["read", "submit"])
    labels = str(stack.settings.demo_data / "buildings/nairobi/labels.geojson")
    body = {"source": "nairobi", "labels_path": labels, "epochs": 1, "width": 4, "depth": 3,
            "max_steps_per_epoch": 1}  # fmt: skip
    created = locked.post("/training-runs", json=body, headers=bearer(mine))
    assert created.status_code == 202, created.text
    run = created.json()["id"]
    assert locked.post(f"/training-runs/{run}/cancel", headers=bearer(mine)).status_code in (
        200,
        409,
    )  # cancelled at once: the test needs the row, not a trained model
    assert locked.get(f"/training-runs/{run}", headers=bearer(mine)).status_code == 200
    for method, path in [("GET", f"/training-runs/{run}"),
                         ("POST", f"/training-runs/{run}/cancel")]:  # fmt: skip
        response = locked.request(method, path, headers=bearer(theirs))
        assert response.status_code == 404, (method, path, response.text)
    assert run not in [r["id"] for r in locked.get("/training-runs", headers=bearer(theirs)).json()]
    assert run in [r["id"] for r in locked.get("/training-runs", headers=bearer(mine)).json()]
    admin = locked.get("/training-runs", headers=bearer(tokens["admin"])).json()
    assert run in [r["id"] for r in admin]
