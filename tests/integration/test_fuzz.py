"""Schemathesis over the OpenAPI schema of the running API: no 5xx, responses match schemas.

Every operation gets a bounded number of generated requests. Streams that never end
(server-sent events) are left out; everything else, writes included, is exercised.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)


@pytest.fixture(scope="module")
def api_schema(api_url: str):  # noqa: ANN201 - a schemathesis schema
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
