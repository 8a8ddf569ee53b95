"""Tenants, their API keys and the contributor identities they own (admin). A key's secret is
returned once, at creation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from constellation.api.deps import Admin, InferenceCaller, Principal, SessionDep
from constellation.api.protocol.responses import errors
from constellation.api.schemas.tenants import (
    AcceptanceIn,
    AcceptanceOut,
    ContributorLinkOut,
    DeclarationsIn,
    KeyIn,
    KeyOut,
    LinkCreated,
    NewKeyOut,
    TenantIn,
    TenantOut,
)
from constellation.errors import Forbidden
from constellation.registry import acceptances, ownership
from constellation.registry import tenants as repo
from constellation.registry.tables import ApiKey, Tenant

router = APIRouter(prefix="/api", tags=["tenants"], responses=errors(400, 401, 403, 404))


def tenant_dict(t: Tenant) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "declared_use": t.declared_use,
        "monthly_active_users": t.monthly_active_users,
        "requests_per_minute": t.requests_per_minute,
        "tokens_per_minute": t.tokens_per_minute,
        "data_stays_on_platform": t.data_stays_on_platform,
        "created_at": t.created_at.isoformat(),
    }


def key_dict(k: ApiKey) -> dict[str, Any]:
    return {
        "id": k.id,
        "tenant": k.tenant_id,
        "name": k.name,
        "scopes": k.scopes,
        "created_at": k.created_at.isoformat(),
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
    }


@router.get("/tenants", response_model=list[TenantOut])
def list_tenants(_: Admin, s: SessionDep) -> list[dict[str, Any]]:
    """All tenants."""
    return [tenant_dict(t) for t in repo.list_tenants(s)]


@router.get("/tenants/{id}", response_model=TenantOut)
def get_tenant(id: str, _: Admin, s: SessionDep) -> dict[str, Any]:
    """One tenant."""
    return tenant_dict(repo.get_tenant(s, id=id))


@router.post("/tenants", status_code=status.HTTP_201_CREATED, response_model=TenantOut, responses=errors(409))
def add_tenant(body: TenantIn, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Create a tenant with its declared use (commercial or non-commercial)."""
    return tenant_dict(
        repo.add_tenant(
            s,
            id=body.id,
            name=body.name,
            declared_use=body.declared_use,
            monthly_active_users=body.monthly_active_users,
        )
    )


@router.patch("/tenants/{id}", response_model=TenantOut)
def set_declarations(id: str, body: DeclarationsIn, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Update the tenant's declared use, monthly active users, rate limits and whether its data
    must stay on the platform (fields left out stay; a rate limit sent as null goes back to the
    server's default)."""
    limits = body.model_dump(include=set(repo.RATE_LIMIT_FIELDS) & body.model_fields_set)
    repo.set_rate_limits(s, tenant_id=id, changes=limits)
    if body.data_stays_on_platform is not None:
        repo.set_data_residency(s, tenant_id=id, stays_on_platform=body.data_stays_on_platform)
    return tenant_dict(
        acceptances.set_declarations(
            s, tenant_id=id, declared_use=body.declared_use, monthly_active_users=body.monthly_active_users
        )
    )


def _self_or_admin(principal: Principal, tenant_id: str) -> None:
    if not principal.is_admin and principal.tenant_id != tenant_id:
        raise Forbidden(
            f"a key of tenant '{principal.tenant_id}' cannot act for tenant '{tenant_id}'; "
            "use one of that tenant's keys or an admin key",
            code="wrong_tenant",
        )


@router.get("/tenants/{id}/acceptances", response_model=list[AcceptanceOut])
def list_acceptances(
    id: str, principal: InferenceCaller, s: SessionDep, include_withdrawn: bool = False
) -> list[dict[str, Any]]:
    """The licences whose use restrictions this tenant has accepted (its own `inference` keys
    or admin)."""
    _self_or_admin(principal, id)
    rows = acceptances.list_acceptances(s, tenant_id=id, include_withdrawn=include_withdrawn)
    return [acceptances.acceptance_dict(a) for a in rows]


@router.post("/tenants/{id}/acceptances", status_code=status.HTTP_201_CREATED, response_model=AcceptanceOut)
def accept(id: str, body: AcceptanceIn, principal: InferenceCaller, s: SessionDep) -> dict[str, Any]:
    """Accept a licence's flow-down use restrictions, recorded with the time and the accepting
    key's id; models under that licence become usable. Accepting again returns the first record."""
    _self_or_admin(principal, id)
    a = acceptances.accept(s, tenant_id=id, licence_id=body.license, key_id=principal.key_id, via="api")
    return acceptances.acceptance_dict(a)


@router.delete("/tenants/{id}/acceptances/{license}", response_model=AcceptanceOut)
def withdraw(id: str, license: str, principal: InferenceCaller, s: SessionDep) -> dict[str, Any]:
    """Withdraw an acceptance; models needing it are refused from the next request on."""
    _self_or_admin(principal, id)
    return acceptances.acceptance_dict(acceptances.withdraw(s, tenant_id=id, licence_id=license))


@router.get("/keys", response_model=list[KeyOut])
def list_keys(_: Admin, s: SessionDep, tenant: str | None = None) -> list[dict[str, Any]]:
    """API keys (never their secrets)."""
    return [key_dict(k) for k in repo.list_keys(s, tenant_id=tenant)]


@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model=NewKeyOut)
def create_key(body: KeyIn, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Create a key; `key` in the answer is shown this once and stored only as a hash."""
    new = repo.create_key(s, tenant_id=body.tenant, scopes=body.scopes, name=body.name)
    return {**key_dict(new.row), "key": new.secret}


@router.delete("/keys/{key_id}", response_model=KeyOut)
def revoke_key(key_id: str, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Revoke a key; requests with it get 401 from now on."""
    return key_dict(repo.revoke_key(s, key_id=key_id))


@router.get("/tenants/{id}/contributors", response_model=list[ContributorLinkOut])
def list_contributor_links(id: str, principal: InferenceCaller, s: SessionDep) -> list[dict[str, Any]]:
    """The contributor identities this tenant owns: the ones its keys may credit as author or data
    provider of a fine-tune (its own `inference` keys or admin)."""
    _self_or_admin(principal, id)
    return [ownership.link_dict(row) for row in ownership.links(s, tenant_id=id)]


@router.put("/tenants/{id}/contributors/{contributor}", response_model=LinkCreated)
def link_contributor(id: str, contributor: str, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Record that the tenant owns a registered contributor (admin); linking again changes
    nothing (`created: false`)."""
    row, created = ownership.link(s, tenant_id=id, contributor_id=contributor)
    return {**ownership.link_dict(row), "created": created}


@router.delete("/tenants/{id}/contributors/{contributor}", status_code=status.HTTP_204_NO_CONTENT)
def unlink_contributor(id: str, contributor: str, _: Admin, s: SessionDep) -> None:
    """Remove a link (admin): the tenant's fine-tunes may no longer credit that contributor;
    adapters already trained keep their author."""
    ownership.unlink(s, tenant_id=id, contributor_id=contributor)
