"""API keys: created once, shown once, stored only as a hash.

A key reads `ts_<prefix>_<secret>`. The prefix is stored in clear so a key can be found
with one indexed lookup and named in logs; the secret is 32 random bytes, so a plain
SHA-256 of it is enough (no salt or slow hash is needed for non-guessable secrets), and
the comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from tilesight.errors import InvalidInput, NotFound, Unauthorized
from tilesight.tables import ApiKey

SCOPES = ("read", "submit", "admin")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id, name and scopes (admin implies every scope)."""

    key_id: int | None
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


ANONYMOUS = Principal(key_id=None, name="anonymous", scopes=frozenset(SCOPES))


def owner_filter(viewer: Principal | None) -> int | None | bool:
    """Whose rows (jobs, training runs) `viewer` may see: True for everyone's (admin, or no
    key on a server that needs none), else the id of the key that made them."""
    if viewer is None or viewer.allows("admin"):
        return True
    return viewer.key_id


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    session: Session, name: str, scopes: list[str], minted_anonymously: bool = False
) -> tuple[ApiKey, str]:
    """Store a new key and return it with its token, which is never retrievable again.

    `minted_anonymously` marks a key made through the API while keys were off: anyone
    who reached the API could have made it, and it stays valid once keys are turned on,
    so lists show the mark for an operator to revoke such keys."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(f"scopes must be some of {', '.join(SCOPES)}; got {scopes}")
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(
        name=name,
        prefix=prefix,
        secret_hash=_hash(secret),
        scopes=sorted(set(scopes)),
        minted_anonymously=minted_anonymously,
    )
    session.add(row)
    session.flush()
    return row, f"ts_{prefix}_{secret}"


def authenticate(session: Session, token: str) -> Principal:
    """The principal for a token; Unauthorized if it is malformed, unknown or revoked."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "ts":
        raise Unauthorized("malformed API key; expected ts_<prefix>_<secret>")
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if row is None or not hmac.compare_digest(row.secret_hash, _hash(parts[2])):
        raise Unauthorized("unknown API key")
    if row.revoked_at is not None:
        raise Unauthorized("this API key was revoked")
    return Principal(key_id=row.id, name=row.name, scopes=frozenset(row.scopes))


def revoke_key(session: Session, prefix: str) -> ApiKey:
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None:
        raise NotFound(f"no API key with prefix {prefix!r}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
    return row


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))
