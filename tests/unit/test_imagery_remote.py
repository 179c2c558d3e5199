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
        "http://2130706433/x",  # 127.0.0.1 as one decimal number
        "http://0x7f000001/x",  # ... in hex
        "http://0177.0.0.1/x",  # ... with an octal first part
        "http://[::ffff:a9fe:a9fe]/latest",  # 169.254.169.254, IPv6-mapped, hex
    ],
)
def test_internal_addresses_are_refused(url: str) -> None:
    # some spellings httpx itself rejects as invalid: refused all the same
    with pytest.raises(InvalidInput, match="internal address|not a valid URL"):
        check_url(url, allowlist=[])


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a", "gopher://x/"])
def test_only_http(url: str) -> None:
    with pytest.raises(InvalidInput, match="only http"):
        check_url(url, allowlist=[])


def test_allowlist_names_a_host() -> None:
    assert check_url("http://127.0.0.1:9/x", allowlist=["127.0.0.1"]).host == "127.0.0.1"


class Handler(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
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


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Answers for made-up names, in turn (the last one repeats); a unit test may fake
    the resolver, which is outside the machine. Returns the names looked up."""
    import socket

    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        queue = answers[host]
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_name_that_resolves_privately_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"internal.example": ["10.1.2.3"]})
    with pytest.raises(InvalidInput, match="internal address"):
        check_url("http://internal.example/tiles/1/2/3.png", allowlist=[])


def test_dns_rebinding_cannot_reach_the_second_answer(
    monkeypatch: pytest.MonkeyPatch, base: str
) -> None:
    """The name is public when vetted and loopback afterwards; the read must go to the
    vetted (public, here unreachable) address, never to the local server."""
    port = base.rsplit(":", 1)[1]
    asked = fake_dns(monkeypatch, {"rebind.example": ["8.8.8.8", "127.0.0.1"]})
    Handler.hits = 0
    client = RemoteClient(allowlist=[], timeout_s=1.0)
    try:
        with pytest.raises(UpstreamError):
            client.get(f"http://rebind.example:{port}/ok", max_bytes=1000)
    finally:
        client.close()
    assert asked == ["rebind.example"], "the name was looked up again after the check"
    assert Handler.hits == 0
