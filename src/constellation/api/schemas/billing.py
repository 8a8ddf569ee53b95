"""Billing schemas: funds and spending limits as sent, usage events, invoices, statements and
balances as answered."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from constellation.economy.money import MAX_AMOUNT_NANOS


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
