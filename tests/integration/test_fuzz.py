"""Schemathesis over the OpenAPI schema of the running API: no 5xx, responses match schemas.

Every operation gets a bounded number of generated requests. Streams that never end
(server-sent events) are left out; everything else, writes included, is exercised.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)


@pytest.fixture(scope="module")
def api_schema(api_url: str):
    return schemathesis.from_uri(
        f"{api_url}/openapi.json", base_url=api_url, force_schema_version="30"
    ).exclude(path_regex=r".*/events$")


schema = schemathesis.from_pytest_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_fuzz(case: schemathesis.Case) -> None:
    response = case.call(timeout=30)
    case.validate_response(
        response,
        checks=(not_a_server_error, status_code_conformance, response_schema_conformance),
    )


# Values hypothesis-jsonschema never generates, but a client can send: Python's JSON
# parser reads NaN, Infinity and 1e400 (as inf), and NUL bytes and long strings reach
# file systems and PostgreSQL. Each goes, as raw JSON text, into every field of the job
# and training bodies and into their query parameters; nothing may answer 5xx.
HOSTILE_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "true", "-1e308"]
HOSTILE_STRINGS = ['"a\\u0000b"', json.dumps("x" * 10_000), json.dumps("é" * 300 + "/x"), '""']
HOSTILE = HOSTILE_NUMBERS + HOSTILE_STRINGS
SQUARE = [[36.8, -1.3], [36.8001, -1.3], [36.8001, -1.2999], [36.8, -1.2999], [36.8, -1.3]]


def _bodies() -> dict[str, dict]:
    aoi = {"type": "Polygon", "coordinates": [SQUARE]}
    return {
        "/jobs": {"source": "nairobi", "aoi": aoi, "options": {"threshold": 0.5}},
        "/training-runs": {
            "source": "nairobi",
            "labels": {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "properties": {}, "geometry": aoi}],
            },
            "epochs": 1,
            "lr": 0.001,
        },  # fmt: skip
    }


def _paths(body: object, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON body a value sits: dict keys and list indices, leaves and all."""
    places = [prefix] if prefix else []
    if isinstance(body, dict):
        for key, value in body.items():
            places += _paths(value, (*prefix, key))
    elif isinstance(body, list):
        for i, value in enumerate(body):
            places += _paths(value, (*prefix, i))
    return places


def _with_marker(body: object, place: tuple) -> str:
    """The body as JSON text with the value at `place` replaced by a marker."""
    copy = json.loads(json.dumps(body))
    target = copy
    for step in place[:-1]:
        target = target[step]
    target[place[-1]] = "@@HOSTILE@@"
    return json.dumps(copy)


def test_hostile_values_in_job_and_training_bodies_get_no_server_error(api_url: str) -> None:
    cases, server_errors, slowest = 0, [], 0.0
    with httpx.Client(base_url=api_url, timeout=60) as client:
        for path, body in _bodies().items():
            for place in _paths(body):
                template = _with_marker(body, place)
                for value in HOSTILE:
                    text = template.replace('"@@HOSTILE@@"', value)
                    start = time.perf_counter()
                    try:
                        response = client.post(
                            path, content=text, headers={"Content-Type": "application/json"}
                        )
                    except httpx.TransportError as exc:  # the server dropped the connection
                        server_errors.append((path, place, value[:40], repr(exc)))
                        continue
                    slowest = max(slowest, time.perf_counter() - start)
                    cases += 1
                    if response.status_code >= 500:
                        server_errors.append((path, place, value[:40], response.status_code))
                    if response.status_code == 202:  # accepted after all: undo it
                        created = response.json()
                        client.post(f"{path}/{created['id']}/cancel")
        for query in HOSTILE:
            raw = json.loads(query) if query.startswith('"') else query
            for path, params in [("/jobs", {"state": raw, "limit": raw}),
                                 ("/training-runs", {"limit": raw, "offset": raw})]:  # fmt: skip
                response = client.get(path, params=params)
                cases += 1
                if response.status_code >= 500:
                    server_errors.append((path, params, response.status_code))
    print(f"hostile cases: {cases}, slowest refusal {slowest:.3f}s")
    assert cases > 300
    assert server_errors == [], "\n".join(map(str, server_errors))
