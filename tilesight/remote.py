"""Reading http(s) URLs that users give us, without letting them point us at our own network.

A URL from a user is a request the server makes on their behalf (SSRF). Every hop is
checked: only http(s), the host is resolved and refused when any of its addresses is not
globally routable (unless `remote_allowlist` names the host or address): loopback,
private, shared (100.64/10, where cloud metadata services also live), link-local,
multicast, reserved, and the IPv4 address inside an IPv6 one (mapped, compatible, 6to4,
Teredo, NAT64), since a relay or translator would forward to it. A name that does not
resolve is the user's to fix (400). Redirects are followed by hand (at most 3) and
re-checked, and every read has a timeout and a byte cap. GDAL never sees user URLs: files are
downloaded through here and opened locally.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx

from tilesight.errors import InvalidInput, TooLarge, UpstreamError

MAX_REDIRECTS = 3
CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteResponse:
    url: str
    status: int
    content_type: str
    content: bytes


@dataclass(frozen=True)
class Vetted:
    """A URL that passed the checks, and the address it was vetted at: connections go to
    that address, so a DNS answer that changes after the check (rebinding) is never used."""

    url: httpx.URL
    address: str


def vet_url(url: str, allowlist: Sequence[str]) -> Vetted:
    """Parse, resolve and vet one URL; raises InvalidInput saying why it is refused."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidInput(f"not a valid URL: {url!r}") from exc
    if parsed.scheme not in ("http", "https"):
        raise InvalidInput(f"only http(s) URLs are accepted, not {parsed.scheme or 'none'}://")
    host = parsed.host
    if not host:
        raise InvalidInput(f"the URL {url!r} has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise InvalidInput(
            f"cannot resolve host {host!r}: check the URL's host name", host=host
        ) from exc
    addresses = [str(info[4][0]) for info in infos]
    if host not in allowlist:
        for address in addresses:
            if address not in allowlist and _is_internal(address):
                raise InvalidInput(
                    f"the URL points at an internal address ({address}); only public hosts "
                    "are allowed unless the server's remote_allowlist names them",
                    host=host,
                )
    return Vetted(parsed, addresses[0])


def check_url(url: str, allowlist: Sequence[str]) -> httpx.URL:
    """The parsed URL if it may be read (see `vet_url`)."""
    return vet_url(url, allowlist).url


def _is_internal(address: str) -> bool:
    """True unless the address, and any IPv4 address an IPv6 form carries, is global."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:
            return True  # a tunnel to whichever client address it names
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return _not_global(embedded)
    return _not_global(ip)


def _not_global(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # is_global alone lets multicast (224.0.0.1, ff0e::1) and site-local (fec0::/10) through
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified or site_local


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that mapped, 6to4 and well-known NAT64 addresses stand for.

    IPv4-compatible (::a.b.c.d) and local NAT64 (64:ff9b:1::/48) addresses are left to
    `_not_global`, which refuses them: they are reserved or local, wherever they point.
    """
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class RemoteClient:
    """One pooled HTTP client that applies the checks above to every hop."""

    def __init__(self, allowlist: Sequence[str], timeout_s: float) -> None:
        self.allowlist = tuple(allowlist)
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": "tilesight"},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    def close(self) -> None:
        self._client.close()

    @contextmanager
    def stream(self, url: str) -> Iterator[httpx.Response]:
        """The final response after checked redirects; network failures become 502."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            vetted = vet_url(current, self.allowlist)
            try:
                request = self._client.build_request(
                    "GET",
                    vetted.url.copy_with(host=vetted.address),  # pinned: no second lookup
                    headers={"Host": vetted.url.netloc.decode("ascii")},
                    extensions={"sni_hostname": vetted.url.host}
                    if vetted.url.scheme == "https"
                    else {},
                )
                response = self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise UpstreamError(f"could not read {current}: {exc.__class__.__name__}") from exc
            if response.is_redirect and "location" in response.headers:
                response.close()
                current = urljoin(current, response.headers["location"])
                continue
            try:
                yield response
            finally:
                response.close()
            return
        raise UpstreamError(f"{url} redirects more than {MAX_REDIRECTS} times")

    def get(self, url: str, max_bytes: int) -> RemoteResponse:
        """GET a small body (a tile) in memory, capped at `max_bytes`."""
        with self.stream(url) as response:
            body = bytearray()
            try:
                for chunk in response.iter_bytes():
                    body.extend(chunk)
                    if len(body) > max_bytes:
                        raise UpstreamError(f"{url} sent more than {max_bytes} bytes")
            except httpx.HTTPError as exc:
                raise UpstreamError(f"reading {url} failed: {exc.__class__.__name__}") from exc
            return RemoteResponse(
                url=str(response.url),
                status=response.status_code,
                content_type=response.headers.get("content-type", ""),
                content=bytes(body),
            )

    def download(
        self,
        url: str,
        dest: Path,
        max_bytes: int,
        progress: Callable[[float], None] | None = None,
    ) -> Path:
        """Stream a file to `dest` under a byte cap; anything but a 200 is a 502 saying so."""
        with self.stream(url) as response:
            if response.status_code != 200:
                raise UpstreamError(
                    f"{url} answered HTTP {response.status_code}", status=response.status_code
                )
            total = int(response.headers.get("content-length") or 0)
            if total > max_bytes:
                raise TooLarge(f"{url} is {total} bytes; the limit is {max_bytes}", limit=max_bytes)
            dest.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            try:
                with open(dest, "wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise TooLarge(f"{url} exceeds the limit of {max_bytes} bytes")
                        out.write(chunk)
                        if progress and total:
                            progress(written / total)
            except httpx.HTTPError as exc:
                dest.unlink(missing_ok=True)
                raise UpstreamError(f"reading {url} failed: {exc.__class__.__name__}") from exc
            except TooLarge:
                dest.unlink(missing_ok=True)
                raise
        return dest
