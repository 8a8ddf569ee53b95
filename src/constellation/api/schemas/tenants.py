"""Tenant schemas: tenants, their declarations, licence acceptances, API keys and contributor
links, as sent (…In) and as answered (…Out)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from constellation.config import MAX_PER_MINUTE


class TenantIn(BaseModel):
    id: str
    name: str
    declared_use: Literal["commercial", "non-commercial"] = "commercial"
    monthly_active_users: int = Field(default=0, ge=0)


class DeclarationsIn(BaseModel):
    declared_use: Literal["commercial", "non-commercial"] | None = None
    monthly_active_users: int | None = Field(default=None, ge=0)
    requests_per_minute: int | None = Field(
        default=None, ge=0, le=MAX_PER_MINUTE, description="rate limit; 0 = unlimited, null = server default"
    )
    tokens_per_minute: int | None = Field(
        default=None, ge=0, le=MAX_PER_MINUTE, description="rate limit; 0 = unlimited, null = server default"
    )
    data_stays_on_platform: bool | None = Field(
        default=None,
        description="true: the tenant's data must not leave the platform, so models of upstream "
        "providers outside it are refused (403 data_must_stay_on_platform)",
    )


class AcceptanceIn(BaseModel):
    license: str = Field(description="id of the licence whose use restrictions the tenant accepts")


class KeyIn(BaseModel):
    tenant: str
    scopes: list[str] = Field(default_factory=lambda: ["inference"])
    name: str = ""


class TenantOut(BaseModel):
    id: str
    name: str
    declared_use: Literal["commercial", "non-commercial"]
    monthly_active_users: int
    requests_per_minute: int | None = Field(description="null: the server's default")
    tokens_per_minute: int | None = Field(description="null: the server's default")
    data_stays_on_platform: bool = Field(description="true: provider models outside the platform are refused")
    created_at: str


class KeyOut(BaseModel):
    id: str
    tenant: str
    name: str
    scopes: list[str]
    created_at: str
    revoked_at: str | None


class NewKeyOut(KeyOut):
    key: str = Field(description="the secret: shown this once, stored only as a hash")


class AcceptanceOut(BaseModel):
    tenant: str
    license: str
    restrictions: list[str] = Field(description="the use restrictions accepted, as they read then")
    key_id: str | None = Field(description="the key that accepted")
    via: str
    accepted_at: str
    withdrawn_at: str | None


class ContributorLinkOut(BaseModel):
    tenant: str
    contributor: str
    created_at: str


class LinkCreated(ContributorLinkOut):
    created: bool = Field(description="false when the link existed")
