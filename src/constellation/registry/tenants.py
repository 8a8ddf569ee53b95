"""Tenants (who calls models, with a declared use) and their API keys: stored as a sha256 of
a high-entropy secret, shown once at creation, revocable, scoped."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from constellation.config import MAX_PER_MINUTE
from constellation.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from constellation.registry._common import check_slug
from constellation.registry.tables import DECLARED_USES, ApiKey, Tenant, TenantContributor, utcnow

KEY_PREFIX = "cst"
_SCOPE = re.compile(r"inference|admin|contributor:[a-z0-9][a-z0-9._\-]*")


def add_tenant(
    s: Session, *, id: str, name: str, declared_use: str = "commercial", monthly_active_users: int = 0
) -> Tenant:
    check_slug(id, what="tenant id")
    if declared_use not in DECLARED_USES:
        raise InvalidInput(f"declared use must be one of {', '.join(DECLARED_USES)}", param="declared_use")
    if monthly_active_users < 0:
        raise InvalidInput("monthly_active_users cannot be negative", param="monthly_active_users")
    if s.get(Tenant, id) is not None:
        raise Conflict(f"tenant '{id}' already exists", code="duplicate")
    t = Tenant(id=id, name=name, declared_use=declared_use, monthly_active_users=monthly_active_users)
    s.add(t)
    s.flush()
    return t


def get_tenant(s: Session, *, id: str) -> Tenant:
    t = s.get(Tenant, id)
    if t is None:
        raise NotFound(
            f"no tenant '{id}'; create it with `constellation tenants add {id}`", code="tenant_not_found"
        )
    return t


def list_tenants(s: Session) -> list[Tenant]:
    return list(s.scalars(select(Tenant).order_by(Tenant.id)))


RATE_LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute")


def set_rate_limits(s: Session, *, tenant_id: str, changes: Mapping[str, int | None]) -> Tenant:
    """Set the tenant's rate limits named in `changes` (`RATE_LIMIT_FIELDS`): a number per
    minute (0 = unlimited) or None (back to the server's default); the others stay."""
    t = get_tenant(s, id=tenant_id)
    for name, value in changes.items():
        if name not in RATE_LIMIT_FIELDS:
            raise InvalidInput(f"unknown rate limit '{name}'; use one of {', '.join(RATE_LIMIT_FIELDS)}")
        if value is not None and not 0 <= value <= MAX_PER_MINUTE:
            raise InvalidInput(f"{name} must be 0 (unlimited) to {MAX_PER_MINUTE}, not {value}", param=name)
        setattr(t, name, value)
    s.flush()
    return t


def set_data_residency(s: Session, *, tenant_id: str, stays_on_platform: bool) -> Tenant:
    """Declare whether the tenant's data must stay on the platform's infrastructure (then models
    of providers outside it are refused before anything is sent to them)."""
    t = get_tenant(s, id=tenant_id)
    t.data_stays_on_platform = stays_on_platform
    s.flush()
    return t


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly created key; `secret` is the only time the full key is visible."""

    row: ApiKey
    secret: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_scopes(scopes: list[str]) -> list[str]:
    bad = [sc for sc in scopes if not _SCOPE.fullmatch(sc)]
    if bad or not scopes:
        raise InvalidInput(
            f"invalid scopes {bad or scopes}: use 'inference', 'admin' or 'contributor:<contributor-id>'",
            param="scopes",
        )
    return sorted(set(scopes))


def _check_contributor_scopes(s: Session, *, tenant_id: str, scopes: list[str]) -> None:
    """A `contributor:<id>` key reads that contributor's statement, so its tenant must own it."""
    for cid in (sc.split(":", 1)[1] for sc in scopes if sc.startswith("contributor:")):
        if s.get(TenantContributor, (tenant_id, cid)) is None:
            raise InvalidInput(
                f"tenant '{tenant_id}' is not linked to contributor '{cid}', so its keys may not read "
                f"that contributor's statement; link them first with "
                f"`constellation tenants link {tenant_id} --contributor {cid}`",
                param="scopes",
                code="contributor_not_linked",
            )


def create_key(s: Session, *, tenant_id: str, scopes: list[str], name: str = "") -> NewKey:
    """A new key; a `contributor:<id>` scope needs the tenant linked to that contributor."""
    get_tenant(s, id=tenant_id)
    _check_contributor_scopes(s, tenant_id=tenant_id, scopes=check_scopes(scopes))
    key_id = secrets.token_hex(6)
    secret = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        id=key_id, tenant_id=tenant_id, name=name, secret_hash=_hash(secret), scopes=check_scopes(scopes)
    )
    s.add(row)
    s.flush()
    return NewKey(row=row, secret=secret)


def authenticate(s: Session, *, secret: str) -> ApiKey:
    """The live key for `secret`, or Unauthenticated (same message for unknown and revoked)."""
    parts = secret.split("_", 2)
    row = s.get(ApiKey, parts[1]) if len(parts) == 3 and parts[0] == KEY_PREFIX else None
    if row is None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
        raise Unauthenticated(
            "invalid API key; pass 'Authorization: Bearer cst_...' with a key from "
            "`constellation keys create`"
        )
    if row.revoked_at is not None:
        raise Unauthenticated(
            f"API key {row.id} was revoked; create a new one with `constellation keys create`",
            code="revoked_api_key",
        )
    return row


def revoke_key(s: Session, *, key_id: str) -> ApiKey:
    row = s.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key with id '{key_id}'", code="key_not_found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    s.flush()
    return row


def list_keys(s: Session, *, tenant_id: str | None = None) -> list[ApiKey]:
    q = select(ApiKey).order_by(ApiKey.created_at)
    if tenant_id is not None:
        q = q.where(ApiKey.tenant_id == tenant_id)
    return list(s.scalars(q))
