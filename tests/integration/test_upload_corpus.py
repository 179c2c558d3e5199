"""Every file of the corrupt corpus, uploaded to the real API, gets a 4xx JSON error,
and the same keep-alive connection then serves the next request (after a 500 uvicorn
closes it, so a crash also broke the request after it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.corpus_support import build_corpus, malformed_bodies
from tilesight.settings import Settings


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=60) as client:
        yield client


def _ids(client: httpx.Client) -> set[str]:
    response = client.get("/sources")
    assert response.status_code == 200, response.text
    return {s["id"] for s in response.json()}


def _assert_refused(response: httpx.Response, elapsed: float, what: str, home: Path) -> None:
    assert 400 <= response.status_code < 500, f"{what}: {response.status_code} {response.text}"
    body = response.json()
    assert body["error"], what
    assert str(home) not in response.text, f"{what}: the error names a server path"
    assert elapsed < 5, f"{what}: refused after {elapsed:.1f} s"


def test_every_corrupt_file_is_a_4xx_and_the_connection_lives_on(
    client: httpx.Client, corpus: dict[str, Path], settings: Settings
) -> None:
    before = _ids(client)
    statuses, slowest = {}, ("", 0.0)
    for name, path in corpus.items():
        start = time.perf_counter()
        response = client.post(
            "/sources/upload",
            files={"file": (name, path.read_bytes())},
            data={"name": f"corrupt {name}"},
        )
        elapsed = time.perf_counter() - start
        _assert_refused(response, elapsed, name, settings.home)
        statuses[name] = response.status_code
        slowest = max(slowest, (name, elapsed), key=lambda item: item[1])
        assert client.get("/healthz").status_code == 200, f"after {name}"
    print(f"corrupt corpus: {len(statuses)} files, all 4xx: {statuses}; slowest {slowest}")
    assert len(statuses) >= 20
    assert statuses["spread-z7.zip"] == 413 and statuses["sparse-65536.tif"] == 413
    assert statuses["big-member.zip"] == 413
    assert _ids(client) == before
    assert not list((settings.home / "staging").glob("*.part")), "staging files left behind"


def test_malformed_multipart_bodies_are_400(client: httpx.Client, settings: Settings) -> None:
    for name, (content_type, body) in malformed_bodies().items():
        start = time.perf_counter()
        response = client.post(
            "/sources/upload", content=body, headers={"content-type": content_type}
        )
        _assert_refused(response, time.perf_counter() - start, name, settings.home)
        assert response.status_code == 400, name
        assert client.get("/healthz").status_code == 200, f"after {name}"
