"""Request dependencies as `Annotated` aliases: the platform, a DB session, and the caller's
principal resolved from `Authorization: Bearer <key>` with scope checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from constellation.errors import Forbidden, Unauthenticated
from constellation.platform import Platform
from constellation.registry.tenants import authenticate


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


def get_session(platform: PlatformDep) -> Iterator[Session]:
    with platform.db.session() as s:
        yield s


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's tenant and scopes."""

    tenant_id: str
    key_id: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def contributor_ids(self) -> set[str]:
        return {sc.split(":", 1)[1] for sc in self.scopes if sc.startswith("contributor:")}


def get_principal(request: Request, platform: PlatformDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "missing API key; send 'Authorization: Bearer cst_...' "
            "(create one with `constellation keys create --tenant ID`)",
            code="missing_api_key",
        )
    with platform.db.session() as s:
        key = authenticate(s, secret=token.strip())
        return Principal(tenant_id=key.tenant_id, key_id=key.id, scopes=frozenset(key.scopes))


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(scope: str) -> Callable[[Principal], Principal]:
    def check(principal: PrincipalDep) -> Principal:
        if scope not in principal.scopes and not principal.is_admin:
            raise Forbidden(
                f"this API key lacks the '{scope}' scope; create a key with --scope {scope}",
                code="insufficient_scope",
            )
        return principal

    return check


InferenceCaller = Annotated[Principal, Depends(require("inference"))]
Admin = Annotated[Principal, Depends(require("admin"))]
