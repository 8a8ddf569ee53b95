"""Usage, invoices, statements and tenant funds. A tenant's `inference` key reads its own usage
and invoice, a `contributor:<id>` key reads that contributor's statement and nothing of its
tenant's, an admin key reads everything."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field

from constellation.api.deps import Admin, InferenceCaller, Principal, PrincipalDep, SessionDep
from constellation.api.protocol import errors
from constellation.economy import ledger, reports
from constellation.economy.money import MAX_AMOUNT_NANOS
from constellation.errors import Forbidden, InvalidInput

router = APIRouter(prefix="/api", tags=["billing"], responses=errors(400, 401, 403))

Format = Literal["json", "csv"]


class FundsIn(BaseModel):
    amount_nanos: int = Field(
        gt=0, le=MAX_AMOUNT_NANOS, description="Funds to add, in nano-USD (1e-9 USD); at most 10**15."
    )
    memo: str = ""


class LimitIn(BaseModel):
    prepaid: bool = False
    spending_limit_nanos: int | None = Field(default=None, ge=0, le=MAX_AMOUNT_NANOS)


class UsageEventOut(BaseModel):
    request_id: str
    tenant: str
    model: str
    status: str = Field(
        description="succeeded, failed (not charged) or cancelled (charged for what it produced)"
    )
    input_tokens: int
    output_tokens: int
    compute_ns: int
    device_class: str
    price_nanos: int
    finished_at: str = Field(description="ISO 8601, UTC")
    lineage: dict[str, Any] = Field(description="the model's lineage and licences when it ran")


class ReportLine(BaseModel):
    """A line of an invoice or statement: an amount, grouped by the fields before it."""

    model_config = ConfigDict(extra="allow")

    amount_nanos: int
    amount_usd: str
    requests: int
    request_ids: list[str]


class ByModel(ReportLine):
    model: str
    operation: str = Field(description="inference or finetune")


class ByArtifact(ReportLine):
    role: str
    artifact: str | None


class InvoiceByArtifact(ByArtifact):
    contributor: str


class ModelNotices(BaseModel):
    model: str
    notices: list[str] | None = None
    licences: list[str] | None = Field(default=None, description="for a model removed since")


class InvoiceOut(BaseModel):
    object: Literal["invoice"]
    tenant: str
    period: str
    currency: Literal["USD"]
    total_nanos: int
    total_usd: str
    requests: int
    lines_by_model: list[ByModel]
    lines_by_artifact: list[InvoiceByArtifact]
    notices: list[ModelNotices]
    workflow_runs: list[dict[str, Any]] = Field(
        default_factory=list, description="each workflow run as one line, its steps beneath"
    )


class StatementOut(BaseModel):
    object: Literal["statement"]
    contributor: str
    period: str
    currency: Literal["USD"]
    total_nanos: int
    total_usd: str
    requests: int
    lines_by_model: list[ByModel]
    lines_by_artifact: list[ByArtifact]


class BalanceOut(BaseModel):
    account: str = Field(description="tenant:<id>, contributor:<id> or external:<name>")
    kind: str
    balance_nanos: int
    floor_nanos: int | None = Field(description="the lowest the balance may go (null: no floor)")


class FundsOut(BaseModel):
    tenant: str
    balance_nanos: int


class LimitOut(LimitIn):
    tenant: str


CSV = {"text/csv": {"schema": {"type": "string"}}}


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
