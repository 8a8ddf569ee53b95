"""Tenant declarations that licences are checked against: declared use, monthly active users,
and explicit, audited acceptances of licences' flow-down use restrictions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from constellation.errors import InvalidInput, NotFound
from constellation.registry.licences import get_licence
from constellation.registry.tables import DECLARED_USES, Acceptance, Tenant, utcnow
from constellation.registry.tenants import get_tenant


def set_declarations(
    s: Session, *, tenant_id: str, declared_use: str | None = None, monthly_active_users: int | None = None
) -> Tenant:
    """Update what the tenant declares; None leaves a field as it is."""
    t = get_tenant(s, id=tenant_id)
    if declared_use is not None:
        if declared_use not in DECLARED_USES:
            raise InvalidInput(
                f"declared use must be one of {', '.join(DECLARED_USES)}, not '{declared_use}'",
                param="declared_use",
            )
        t.declared_use = declared_use
    if monthly_active_users is not None:
        if monthly_active_users < 0:
            raise InvalidInput("monthly_active_users cannot be negative", param="monthly_active_users")
        t.monthly_active_users = monthly_active_users
    s.flush()
    return t


def active_acceptance(s: Session, *, tenant_id: str, licence_id: str) -> Acceptance | None:
    q = select(Acceptance).where(
        Acceptance.tenant_id == tenant_id,
        Acceptance.licence_id == licence_id,
        Acceptance.withdrawn_at.is_(None),
    )
    return s.scalars(q).first()


def accept(
    s: Session, *, tenant_id: str, licence_id: str, key_id: str | None, via: str = "api"
) -> Acceptance:
    """Record that the tenant accepts the licence's use restrictions (idempotent: an acceptance
    still in force is returned as it is, with its original time and key)."""
    get_tenant(s, id=tenant_id)
    lic = get_licence(s, id=licence_id)
    if not lic.restrictions:
        raise InvalidInput(
            f"licence '{licence_id}' has no use restrictions to accept; models under it need no acceptance",
            param="license",
            code="nothing_to_accept",
        )
    current = active_acceptance(s, tenant_id=tenant_id, licence_id=licence_id)
    if current is not None:
        return current
    row = Acceptance(
        tenant_id=tenant_id,
        licence_id=licence_id,
        restrictions=list(lic.restrictions),
        key_id=key_id,
        via=via,
    )
    s.add(row)
    s.flush()
    return row


def withdraw(s: Session, *, tenant_id: str, licence_id: str) -> Acceptance:
    """Withdraw an acceptance in force; models needing it are refused from then on."""
    get_tenant(s, id=tenant_id)
    current = active_acceptance(s, tenant_id=tenant_id, licence_id=licence_id)
    if current is None:
        raise NotFound(
            f"tenant '{tenant_id}' has no acceptance of '{licence_id}' in force", code="acceptance_not_found"
        )
    current.withdrawn_at = utcnow()
    s.flush()
    return current


def list_acceptances(s: Session, *, tenant_id: str, include_withdrawn: bool = False) -> list[Acceptance]:
    get_tenant(s, id=tenant_id)
    q = select(Acceptance).where(Acceptance.tenant_id == tenant_id)
    if not include_withdrawn:
        q = q.where(Acceptance.withdrawn_at.is_(None))
    return list(s.scalars(q.order_by(Acceptance.accepted_at, Acceptance.id)))


def acceptance_dict(a: Acceptance) -> dict[str, Any]:
    return {
        "tenant": a.tenant_id,
        "license": a.licence_id,
        "restrictions": a.restrictions,
        "key_id": a.key_id,
        "via": a.via,
        "accepted_at": a.accepted_at.isoformat(),
        "withdrawn_at": a.withdrawn_at.isoformat() if a.withdrawn_at else None,
    }
