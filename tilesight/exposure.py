"""What the local stack exposes, and what it refuses to expose.

With `auth_required` off every caller is admin, which is what a laptop wants and what
nobody wants on a network. So:

- PostgreSQL (trust auth), Redis (no password) and Triton (no auth at all) of the local
  stack listen on loopback only, whatever `TILESIGHT_HOST` says: `host` is where the
  API listens, and only the API checks keys.
- The API refuses to start on an address beyond loopback with keys off, unless
  `allow_open_access` says a proxy in front of it does the access control.
- Keys minted while keys were off were minted by anyone who could reach the API; they
  are marked (`minted_anonymously`) so an operator can find and revoke them once keys
  are turned on (`tilesight keys list`).
- Only Host headers naming this server are answered, so a page on another domain
  cannot reach the local API through DNS rebinding.
"""

from __future__ import annotations

import ipaddress
import socket

from tilesight.settings import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


class ExposureRefused(RuntimeError):
    """The settings would expose the API without access control; the message says how
    to fix that."""


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse an API reachable beyond this machine where every caller would be admin."""
    if settings.auth_required or settings.allow_open_access or is_loopback(settings.host):
        return
    raise ExposureRefused(
        f"TILESIGHT_HOST={settings.host} serves the API beyond this machine, and with API "
        "keys off every caller is admin. Turn keys on (TILESIGHT_AUTH_REQUIRED=true, then "
        "`tilesight keys create`), listen on 127.0.0.1, or, if a proxy in front does the "
        "access control, say so with TILESIGHT_ALLOW_OPEN_ACCESS=true."
    )


def allowed_hosts(settings: Settings) -> list[str]:
    """Host header names (ports aside) the API answers; `["*"]` for any.

    By default the loopback names and the address the API listens on; on a wildcard
    address, this machine's name as well. Starlette's TestClient sends `testserver`,
    so test settings accept it too."""
    if settings.allowed_hosts:
        return [h.lower() for h in settings.allowed_hosts]
    hosts = list(LOOPBACK_NAMES)
    bound = settings.host.strip("[]").lower()
    if bound in WILDCARDS:
        hosts += [bound or "0.0.0.0", socket.gethostname().lower()]
    elif bound not in hosts:
        hosts.append(bound)
    if settings.environment == "test":
        hosts.append("testserver")
    return hosts


def host_name(header: str) -> str:
    """The name in a Host header, without its port: `[::1]:8080` -> `::1`."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value
