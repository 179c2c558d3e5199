"""SSRF rules of remote reads: schemes, internal addresses, the allowlist, redirects."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tilesight.errors import InvalidInput, TooLarge, UpstreamError
from tilesight.remote import RemoteClient, check_url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://localhost:8080/x",
        "http://10.0.0.8/x",
        "http://192.168.1.1/x",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://0.0.0.0/x",
        "http://224.0.0.1/x",
    ],
)
def test_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput, match="internal address"):
        check_url(url, allowlist=[])


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a", "gopher://x/"])
def test_only_http(url: str) -> None:
    with pytest.raises(InvalidInput, match="only http"):
        check_url(url, allowlist=[])


def test_allowlist_names_a_host() -> None:
    assert check_url("http://127.0.0.1:9/x", allowlist=["127.0.0.1"]).host == "127.0.0.1"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/to-private":
            self.send_response(302)
            self.send_header("Location", "http://10.9.9.9/secret")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b"x" * 5000)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_redirects_are_checked_again_and_bounded(base: str) -> None:
    client = RemoteClient(["127.0.0.1"], timeout_s=5)
    with pytest.raises(InvalidInput, match="internal address"):
        client.get(f"{base}/to-private", max_bytes=100)
    with pytest.raises(UpstreamError, match="redirects more than"):
        client.get(f"{base}/loop", max_bytes=100)
    assert client.get(f"{base}/ok", max_bytes=10_000).content == b"x" * 5000
    with pytest.raises(UpstreamError, match="more than"):
        client.get(f"{base}/ok", max_bytes=100)
    client.close()


def test_download_is_capped(base: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = RemoteClient(["127.0.0.1"], timeout_s=5)
    with pytest.raises(TooLarge):
        client.download(f"{base}/ok", tmp_path / "f", max_bytes=1000)
    assert not (tmp_path / "f").exists()
    assert client.download(f"{base}/ok", tmp_path / "g", max_bytes=10_000).stat().st_size == 5000
    client.close()
