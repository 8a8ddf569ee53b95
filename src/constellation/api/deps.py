"""Request dependencies as `Annotated` aliases: the app's state, the platform, a DB session, and
the caller's principal resolved from `Authorization: Bearer <key>` with scope checks.

The inference hot path's dependencies are `async`: FastAPI runs a plain `def` dependency in a
worker thread, a hop that costs more than the work when the key is cached."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from constellation.api.cache import RefreshingCache
from constellation.api.state import AppState, state_of
from constellation.errors import Forbidden, Unauthenticated
from constellation.platform import Platform
from constellation.registry.tenants import authenticate


async def get_state(request: Request) -> AppState:
    """The app's state (api/state.py): its platform, engines, meter, caches and settings."""
    return state_of(request.app)


StateDep = Annotated[AppState, Depends(get_state)]


async def get_platform(state: StateDep) -> Platform:
    return state.platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


def get_session(platform: PlatformDep) -> Iterator[Session]:
    with platform.db.session() as s:
        yield s


# scope="function": the session commits when the handler returns, before the response is sent,
# so a client that reads "revoked" or "switched" finds it true on its very next request, and a
# failed commit is the caller's error rather than a success already on the wire.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


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
    (see app.py), one made elsewhere (the CLI) takes effect within `ttl_s`, or twice that while
    a reload is under way (see `RefreshingCache`)."""

    def __init__(self, ttl_s: float = 2.0) -> None:
        self._cache: RefreshingCache[str, Principal] = RefreshingCache(ttl_s)

    def lookup(self, secret: str) -> Principal | None:
        """The cached principal, or None: then call `load` (it reads the database)."""
        return self._cache.get(_digest(secret))

    def load(self, secret: str, load: Callable[[], Principal]) -> Principal:
        return self._cache.load(_digest(secret), load)

    def clear(self) -> None:
        self._cache.clear()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def get_principal(request: Request) -> Principal:
    """The caller of this request, from its API key (cached; a database read on a miss)."""
    return await principal_of(state_of(request.app), request.headers.get("authorization", ""))


async def principal_of(state: AppState, header: str) -> Principal:
    """The caller named by an `Authorization` header value, or Unauthenticated. The app's gate
    (api/gate.py) calls it before a request's body is read, the routes' dependencies after."""
    platform = state.platform
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "missing API key; send 'Authorization: Bearer cst_...' "
            "(create one with `constellation keys create --tenant ID`)",
            code="missing_api_key",
        )

    secret = token.strip()

    def load() -> Principal:
        with platform.db.session() as s:
            key = authenticate(s, secret=secret)
            return Principal(tenant_id=key.tenant_id, key_id=key.id, scopes=frozenset(key.scopes))

    hit = state.keys.lookup(secret)
    return hit if hit is not None else await run_in_threadpool(state.keys.load, secret, load)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def own_tenant(principal: Principal, tenant: str | None) -> str:
    """The tenant whose records this key may read: its own (the default) or, for admin, any."""
    tenant = tenant or principal.tenant_id
    if tenant != principal.tenant_id and not principal.is_admin:
        raise Forbidden(
            f"this key belongs to tenant '{principal.tenant_id}' and cannot read tenant '{tenant}'; "
            "omit ?tenant= or use an admin key",
            code="insufficient_scope",
        )
    return tenant


def own_contributor(principal: Principal, contributor: str) -> str:
    """`contributor`, if this key may read its statement: its `contributor:<id>` scope or admin."""
    if contributor not in principal.contributor_ids() and not principal.is_admin:
        raise Forbidden(
            f"this key cannot read contributor '{contributor}'s statement; "
            f"use a key with scope 'contributor:{contributor}' or an admin key",
            code="insufficient_scope",
        )
    return contributor


def require(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller, who must hold `scope` (or be an admin). One dependency, not one
    per step: each costs FastAPI a few microseconds per request on the inference hot path."""

    async def check(request: Request) -> Principal:
        principal = await get_principal(request)
        if scope not in principal.scopes and not principal.is_admin:
            raise Forbidden(
                f"this API key lacks the '{scope}' scope; create a key with --scope {scope}",
                code="insufficient_scope",
            )
        return principal

    return check


InferenceCaller = Annotated[Principal, Depends(require("inference"))]
Admin = Annotated[Principal, Depends(require("admin"))]
