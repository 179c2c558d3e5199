"""Every address that is not globally routable is refused, however it is spelled.

Offline: the payloads are address literals (or names /etc/hosts answers), so no DNS
server is asked. The same `vet_url` guards remote sources, XYZ templates, every
redirect hop and STAC assets, so refusing here refuses everywhere.
"""

from __future__ import annotations

import ipaddress
import time

import pytest

from tilesight.errors import InvalidInput
from tilesight.remote import vet_url

# (address, why it is internal); each is tried as http, https and with a port
INTERNAL = [
    ("127.0.0.1", "loopback"),
    ("127.1.2.3", "loopback /8"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.0.1", "private"),
    ("100.64.0.1", "shared address space (CGNAT, Tailscale)"),
    ("100.100.100.200", "Alibaba Cloud metadata"),
    ("100.127.255.254", "shared address space, last"),
    ("169.254.169.254", "cloud metadata (AWS, GCP, Azure)"),
    ("169.254.170.2", "ECS task metadata"),
    ("192.0.0.1", "IETF protocol assignments"),
    ("192.0.2.1", "TEST-NET-1"),
    ("198.18.0.1", "benchmarking"),
    ("198.51.100.1", "TEST-NET-2"),
    ("203.0.113.1", "TEST-NET-3"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "SSDP multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("::1", "IPv6 loopback"),
    ("::", "IPv6 unspecified"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped metadata"),
    ("::ffff:100.100.100.200", "IPv4-mapped CGNAT metadata"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::169.254.169.254", "IPv4-compatible metadata"),
    ("::8.8.8.8", "IPv4-compatible (deprecated, reserved)"),
    ("2002:7f00:1::", "6to4 of 127.0.0.1"),
    ("2002:7f00:0001::1", "6to4 of 127.0.0.1, host part"),
    ("2002:a9fe:a9fe::", "6to4 of 169.254.169.254"),
    ("2002:a00:1::", "6to4 of 10.0.0.1"),
    ("2002:c0a8:101::", "6to4 of 192.168.1.1"),
    ("2002:6464:64c8::", "6to4 of 100.100.100.200"),
    ("2002::", "6to4 of 0.0.0.0"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo, client 127.0.0.1"),
    ("2001:0:4136:e378:8000:63bf:5601:5601", "Teredo, client 169.254.169.254"),
    ("2001:0:808:808::1", "Teredo, public server"),
    ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of 169.254.169.254"),
    ("64:ff9b::a00:1", "NAT64 of 10.0.0.1"),
    ("64:ff9b::6464:64c8", "NAT64 of 100.100.100.200"),
    ("64:ff9b:1::7f00:1", "local-use NAT64"),
    ("64:ff9b:1::808:808", "local-use NAT64, public address"),
    ("fc00::1", "unique local"),
    ("fd12:3456:789a::1", "unique local"),
    ("fe80::1", "IPv6 link-local"),
    ("fec0::1", "site-local (deprecated)"),
    ("ff02::1", "IPv6 multicast"),
    ("ff0e::1", "IPv6 global-scope multicast"),
    ("100::1", "discard-only"),
    ("2001:db8::1", "documentation"),
    ("2001:10::1", "ORCHID"),
]

# other spellings of internal hosts: names, integer and octal forms, zones, userinfo
SPELLINGS = [
    "http://localhost/x",
    "http://localhost:8080/x",
    "http://LOCALHOST/x",
    "http://localhost./x",
    "http://2130706433/x",
    "http://0x7f000001/x",
    "http://0177.0.0.1/x",
    "http://0x7f.1/x",
    "http://127.1/x",
    "http://0/x",
    "http://[0:0:0:0:0:0:0:1]/x",
    "http://[0000::0001]/x",
    "http://[::ffff:7f00:1]/x",
    "http://[::ffff:a9fe:a9fe]/latest",
    "http://[fe80::1%25eth0]/x",
    "http://user:pw@127.0.0.1/x",
    "http://example.com@127.0.0.1/x",
    "http://169.254.169.254./latest",
    "http://2852039166/latest",  # 169.254.169.254 as one number
    "http://1684300999/x",  # 100.100.100.199
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "100.63.255.255",  # just below 100.64/10
    "100.128.0.1",  # just above it
    "::ffff:8.8.8.8",
    "2002:808:808::1",  # 6to4 of 8.8.8.8
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2606:4700:4700::1111",
]


def _url(address: str, form: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return [f"http://{host}/x", f"https://{host}/tiles/{{z}}/{{x}}/{{y}}.png", f"http://{host}:9/"][
        form
    ]


PAYLOADS = [_url(address, form) for address, _ in INTERNAL for form in range(3)] + SPELLINGS


def refused(url: str) -> bool:
    try:
        vet_url(url, allowlist=[])
    except InvalidInput as exc:
        # "cannot resolve": a trailing-dot name some resolvers do not answer, refused anyway
        reasons = ("internal address", "not a valid URL", "cannot resolve")
        assert any(reason in exc.message for reason in reasons), exc.message
        return True
    return False


@pytest.mark.parametrize("url", PAYLOADS)
def test_internal_addresses_are_refused(url: str) -> None:
    assert refused(url)


def test_every_payload_refused_quickly() -> None:
    """The count and the slowest refusal, for the closing note of issue 18."""
    slowest, count = 0.0, 0
    for url in PAYLOADS:
        start = time.perf_counter()
        count += refused(url)
        slowest = max(slowest, time.perf_counter() - start)
    print(f"SSRF payloads refused: {count}/{len(PAYLOADS)}, slowest {slowest * 1000:.1f} ms")
    assert count == len(PAYLOADS) >= 180
    assert slowest < 0.5


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    vetted = vet_url(_url(address, 0), allowlist=[])
    assert ipaddress.ip_address(vetted.address.split("%")[0])


def test_allowlist_still_opens_a_named_private_address() -> None:
    assert vet_url("http://100.100.100.200/x", allowlist=["100.100.100.200"]).address


def test_a_host_that_does_not_resolve_is_the_users_to_fix() -> None:
    # .invalid never resolves (RFC 6761); a 400 naming the host, not a 502
    with pytest.raises(InvalidInput, match="cannot resolve host") as caught:
        vet_url("https://no-such-host.invalid/a.tif", allowlist=[])
    assert caught.value.status_code == 400
    assert caught.value.detail == {"host": "no-such-host.invalid"}
