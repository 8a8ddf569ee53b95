"""Which contributor identities each tenant owns: links an admin makes, so that a tenant's keys
name as author or data provider of a fine-tune only contributors that are the tenant's own."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from constellation.errors import Forbidden, InvalidInput, NotFound
from constellation.registry.contributors import get_contributor
from constellation.registry.tables import TenantContributor
from constellation.registry.tenants import get_tenant


def link(s: Session, *, tenant_id: str, contributor_id: str) -> tuple[TenantContributor, bool]:
    """Record that `tenant_id` owns `contributor_id`; returns (link, created). Linking twice is
    harmless, so a script may run it again."""
    get_tenant(s, id=tenant_id)
    get_contributor(s, id=contributor_id)
    row = s.get(TenantContributor, (tenant_id, contributor_id))
    if row is not None:
        return row, False
    row = TenantContributor(tenant_id=tenant_id, contributor_id=contributor_id)
    s.add(row)
    s.flush()
    return row, True


def unlink(s: Session, *, tenant_id: str, contributor_id: str) -> None:
    row = s.get(TenantContributor, (tenant_id, contributor_id))
    if row is None:
        raise NotFound(
            f"tenant '{tenant_id}' is not linked to contributor '{contributor_id}'; "
            f"`constellation tenants contributors {tenant_id}` lists its links",
            code="link_not_found",
        )
    s.delete(row)
    s.flush()


def owned(s: Session, *, tenant_id: str) -> list[str]:
    """The contributor ids `tenant_id` owns, sorted."""
    q = select(TenantContributor.contributor_id).where(TenantContributor.tenant_id == tenant_id)
    return sorted(s.scalars(q))


def links(s: Session, *, tenant_id: str) -> list[TenantContributor]:
    get_tenant(s, id=tenant_id)
    q = select(TenantContributor).where(TenantContributor.tenant_id == tenant_id)
    return list(s.scalars(q.order_by(TenantContributor.contributor_id)))


def link_dict(row: TenantContributor) -> dict[str, Any]:
    return {
        "tenant": row.tenant_id,
        "contributor": row.contributor_id,
        "created_at": row.created_at.isoformat(),
    }


def check_may_name(s: Session, *, tenant_id: str, contributor_id: str, param: str) -> None:
    """A tenant may name a contributor only if it owns it: an unknown id is a 404 (nothing is
    created on the fly), someone else's a 403."""
    try:
        get_contributor(s, id=contributor_id)
    except NotFound:
        raise NotFound(
            f"no contributor '{contributor_id}' ({param}); name one your tenant owns, or ask an admin "
            f"to add yours and link it: `constellation tenants link {tenant_id} --contributor ID`",
            param=param,
            code="contributor_not_found",
        ) from None
    if s.get(TenantContributor, (tenant_id, contributor_id)) is None:
        raise Forbidden(
            f"tenant '{tenant_id}' does not own contributor '{contributor_id}' ({param}); name one of "
            f"{owned(s, tenant_id=tenant_id) or 'its contributors'}, or ask an admin to link it with "
            f"`constellation tenants link {tenant_id} --contributor {contributor_id}`",
            param=param,
            code="contributor_not_owned",
        )


def default_contributor(s: Session, *, tenant_id: str, param: str) -> str:
    """The contributor a tenant's fine-tune names when the request names none: its only one."""
    ids = owned(s, tenant_id=tenant_id)
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise Forbidden(
            f"tenant '{tenant_id}' owns no contributor identity to credit as {param}; ask an admin "
            f"to link one: `constellation tenants link {tenant_id} --contributor ID`",
            param=param,
            code="no_contributor",
        )
    raise InvalidInput(
        f"tenant '{tenant_id}' owns several contributors; name one of {ids} in '{param}'", param=param
    )
