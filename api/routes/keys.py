"""API keys for administrators: create (token shown once), list, revoke."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, Field

from api.access import principal_of
from api.deps import SessionDep
from tilesight.keys import SCOPES, create_key, list_keys, revoke_key

router = APIRouter(prefix="/keys", tags=["keys"])


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[str] = Field(default=["read", "submit"], description=f"some of {list(SCOPES)}")


class KeyPublic(BaseModel):
    prefix: str
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None
    minted_anonymously: bool = Field(
        description="made here while API keys were off, so by anyone who could reach the "
        "API; it stays valid once keys are on: revoke it unless you know who holds it"
    )


class KeyCreated(KeyPublic):
    token: str = Field(description="send as `Authorization: Bearer <token>`; shown only once")


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create an API key")
def create(body: KeyCreate, request: Request, session: SessionDep) -> KeyCreated:
    anonymous = principal_of(request).key_id is None  # only possible with keys off
    with session.begin():
        row, token = create_key(session, body.name, body.scopes, minted_anonymously=anonymous)
    return KeyCreated(
        **KeyPublic.model_validate(row, from_attributes=True).model_dump(), token=token
    )


@router.get("", summary="List API keys (never their secrets)")
def list_(session: SessionDep) -> list[KeyPublic]:
    return [KeyPublic.model_validate(r, from_attributes=True) for r in list_keys(session)]


@router.delete("/{prefix}", summary="Revoke an API key")
def revoke(prefix: str, session: SessionDep) -> KeyPublic:
    with session.begin():
        row = revoke_key(session, prefix)
    return KeyPublic.model_validate(row, from_attributes=True)
