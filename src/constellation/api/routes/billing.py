"""Usage, invoices, statements and tenant funds. A tenant's `inference` key reads its own usage
and invoice, a `contributor:<id>` key reads that contributor's statement and nothing of its
tenant's, an admin key reads everything."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Response, status

from constellation.api.deps import (
    Admin,
    InferenceCaller,
    PrincipalDep,
    SessionDep,
    own_contributor,
    own_tenant,
)
from constellation.api.protocol.responses import errors
from constellation.api.schemas.billing import (
    BalanceOut,
    FundsIn,
    FundsOut,
    InvoiceOut,
    LimitIn,
    LimitOut,
    StatementOut,
    UsageEventOut,
)
from constellation.economy import ledger, reports
from constellation.errors import InvalidInput

router = APIRouter(prefix="/api", tags=["billing"], responses=errors(400, 401, 403))

Format = Literal["json", "csv"]


CSV = {"text/csv": {"schema": {"type": "string"}}}


def _render(doc: dict[str, Any], fmt: Format) -> Any:
    if fmt == "csv":
        name = f"{doc['object']}-{doc.get('tenant') or doc.get('contributor')}-{doc['period']}.csv"
        # Header values are Latin-1: an ASCII fallback, and the exact name per RFC 6266 / 5987.
        fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
        return Response(
            reports.to_csv(doc), media_type="text/csv", headers={"Content-Disposition": disposition}
        )
    return doc


@router.get("/usage", response_model=list[UsageEventOut])
def usage(
    principal: InferenceCaller,
    s: SessionDep,
    tenant: str | None = None,
    period: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Recent usage events (newest first) of your tenant for a UTC month (`period=YYYY-MM`)."""
    if not 1 <= limit <= 10_000:
        raise InvalidInput("limit must be between 1 and 10000", param="limit")
    return reports.usage_events(s, tenant_id=own_tenant(principal, tenant), period=period, limit=limit)


@router.get("/invoices", response_model=None, responses={200: {"model": InvoiceOut, "content": CSV}})
def invoice(
    principal: InferenceCaller,
    s: SessionDep,
    tenant: str | None = None,
    period: str | None = None,
    format: Format = "json",
) -> Any:
    """Your tenant's invoice for a UTC month, lines by model and by artifact, each with its
    request ids; `format=csv` for a spreadsheet."""
    doc = reports.invoice(s, tenant_id=own_tenant(principal, tenant), period=period)
    return _render(doc, format)


@router.get("/statements", response_model=None, responses={200: {"model": StatementOut, "content": CSV}})
def statement(
    principal: PrincipalDep,
    s: SessionDep,
    contributor: str,
    period: str | None = None,
    format: Format = "json",
) -> Any:
    """A contributor's earnings for a UTC month, lines by model and by artifact, each with its
    request ids. Needs a `contributor:<id>` key for that contributor, or an admin key."""
    own_contributor(principal, contributor)
    return _render(reports.statement(s, contributor_id=contributor, period=period), format)


@router.get("/balances", response_model=list[BalanceOut])
def balances(_: Admin, s: SessionDep) -> list[dict[str, Any]]:
    """Every ledger account's balance (admin)."""
    return ledger.balances(s)


@router.post(
    "/tenants/{id}/funds", status_code=status.HTTP_201_CREATED, response_model=FundsOut, responses=errors(404)
)
def add_funds(id: str, body: FundsIn, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Add prepaid funds to a tenant (admin); returns the new balance."""
    new = ledger.fund(s, tenant_id=id, amount_nanos=body.amount_nanos, memo=body.memo)
    return {"tenant": id, "balance_nanos": new}


@router.put("/tenants/{id}/limit", response_model=LimitOut, responses=errors(404))
def set_limit(id: str, body: LimitIn, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Make a tenant prepaid, give it a spending limit, or neither (admin)."""
    ledger.set_limit(s, tenant_id=id, prepaid=body.prepaid, spending_limit_nanos=body.spending_limit_nanos)
    return {"tenant": id, **body.model_dump()}
