"""Request dependencies as `Annotated` aliases: the platform, a DB session, and the caller's
principal resolved from `Authorization: Bearer <key>` with scope checks."""

from __future__ import annotations

import hashlib
import threading
import time
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


class KeyCache:
    """Authenticated keys for a couple of seconds, so the hot path skips a database round trip.

    Keyed by the secret's sha256; a revocation through this server's API clears it at once
    (see app.py), one made elsewhere (the CLI) takes effect within `ttl_s`."""

    def __init__(self, ttl_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self._hits: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, secret: str, load: Callable[[], Principal]) -> Principal:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._hits.get(digest)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        principal = load()
        with self._lock:
            if len(self._hits) > 10_000:
                self._hits.clear()
            self._hits[digest] = (now, principal)
        return principal

    def clear(self) -> None:
        with self._lock:
            self._hits.clear()


def get_principal(request: Request, platform: PlatformDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "missing API key; send 'Authorization: Bearer cst_...' "
            "(create one with `constellation keys create --tenant ID`)",
            code="missing_api_key",
        )

    def load() -> Principal:
        with platform.db.session() as s:
            key = authenticate(s, secret=token.strip())
            return Principal(tenant_id=key.tenant_id, key_id=key.id, scopes=frozenset(key.scopes))

    cache: KeyCache | None = getattr(request.app.state, "keys", None)
    return cache.get(token.strip(), load) if cache is not None else load()


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
