"""Tenants and their API keys (admin). A key's secret is returned once, at creation."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from constellation.api.deps import Admin, SessionDep
from constellation.registry import tenants as repo
from constellation.registry.tables import ApiKey, Tenant

router = APIRouter(prefix="/api", tags=["tenants"])


class TenantIn(BaseModel):
    id: str
    name: str
    declared_use: Literal["commercial", "non-commercial"] = "commercial"
    monthly_active_users: int = Field(default=0, ge=0)


class KeyIn(BaseModel):
    tenant: str
    scopes: list[str] = Field(default_factory=lambda: ["inference"])
    name: str = ""


def tenant_dict(t: Tenant) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "declared_use": t.declared_use,
        "monthly_active_users": t.monthly_active_users,
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


@router.get("/tenants")
def list_tenants(_: Admin, s: SessionDep) -> list[dict[str, Any]]:
    """All tenants."""
    return [tenant_dict(t) for t in repo.list_tenants(s)]


@router.get("/tenants/{id}")
def get_tenant(id: str, _: Admin, s: SessionDep) -> dict[str, Any]:
    """One tenant."""
    return tenant_dict(repo.get_tenant(s, id=id))


@router.post("/tenants", status_code=status.HTTP_201_CREATED)
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


@router.get("/keys")
def list_keys(_: Admin, s: SessionDep, tenant: str | None = None) -> list[dict[str, Any]]:
    """API keys (never their secrets)."""
    return [key_dict(k) for k in repo.list_keys(s, tenant_id=tenant)]


@router.post("/keys", status_code=status.HTTP_201_CREATED)
def create_key(body: KeyIn, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Create a key; `key` in the answer is shown this once and stored only as a hash."""
    new = repo.create_key(s, tenant_id=body.tenant, scopes=body.scopes, name=body.name)
    return {**key_dict(new.row), "key": new.secret}


@router.delete("/keys/{key_id}")
def revoke_key(key_id: str, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Revoke a key; requests with it get 401 from now on."""
    return key_dict(repo.revoke_key(s, key_id=key_id))
