"""The data behind the dashboard's pictures, as typed JSON: a tenant's usage per day, a
contributor's earnings per day (both summing exactly to the invoice and the statement), and
the lineage graph of what a key can see."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from constellation.api.deps import InferenceCaller, PrincipalDep, SessionDep, StateDep
from constellation.api.protocol import errors
from constellation.api.routes.billing import own_contributor, own_tenant
from constellation.economy import series
from constellation.economy.price_card import price_card, rates_for
from constellation.registry.graph import lineage_graph

router = APIRouter(prefix="/api", tags=["insights"], responses=errors(400, 401, 403))

Day = Field(description="one value per day of `days`, in order")


class UsageLine(BaseModel):
    model: str
    operation: Literal["inference", "finetune"]
    requests: list[int] = Day
    failed: list[int] = Day
    input_tokens: list[int] = Day
    output_tokens: list[int] = Day
    spend_nanos: list[int] = Field(description="nano-USD charged, one value per day of `days`")


class UsageTotals(BaseModel):
    requests: int = Field(description="every usage event, free and failed ones included")
    billed_requests: int = Field(description="requests with a charge: the invoice's `requests`")
    failed: int
    input_tokens: int
    output_tokens: int
    spend_nanos: int = Field(description="equals the invoice's `total_nanos`")


class UsageSeries(BaseModel):
    object: Literal["usage_series"]
    tenant: str
    period: str
    currency: Literal["USD"]
    days: list[str] = Field(description="ISO dates (UTC) of the month")
    series: list[UsageLine]
    totals: UsageTotals


class EarningsLine(BaseModel):
    role: str = Field(description="infra, base, adapter, data, platform, or writeoff (negative)")
    artifact: str | None
    amount_nanos: list[int] = Day
    requests: list[int] = Day


class EarningsTotals(BaseModel):
    amount_nanos: int = Field(description="equals the statement's `total_nanos`")
    requests: int = Field(description="distinct requests: the statement's `requests`")


class EarningsSeries(BaseModel):
    object: Literal["earnings_series"]
    contributor: str
    period: str
    currency: Literal["USD"]
    days: list[str]
    series: list[EarningsLine]
    totals: EarningsTotals


class GraphNode(BaseModel):
    id: str = Field(description="`model:NAME`, `dataset:NAME` or `contributor:ID`")
    type: Literal["base", "adapter", "finetune", "dataset", "contributor"]
    name: str
    license: str | None = None
    family: Literal["permissive", "share-alike", "non-commercial", "restricted"] | None = None
    task: str | None = None
    base: str | None = None
    permitted: bool | None = Field(default=None, description="whether this tenant may use the model")
    refusal: dict[str, str] | None = None
    effective_terms: dict[str, Any] | None = None
    price: dict[str, Any] | None = Field(
        default=None, description="terms along the lineage and the split of a reference request"
    )
    examples: int | None = None
    title: str | None = None
    kind: str | None = None


class GraphEdge(BaseModel):
    source: str
    target: str
    relations: list[Literal["adapter", "finetune", "trained_on", "author", "provider", "paid"]]
    weight: int | None = Field(default=None, description="lineage weight of a `trained_on` edge")
    weight_total: int | None = Field(default=None, description="sum of the model's lineage weights")


class LineageGraph(BaseModel):
    object: Literal["lineage_graph"]
    tenant: str
    families: list[str]
    nodes: list[GraphNode]
    edges: list[GraphEdge]


@router.get("/usage/daily", response_model=UsageSeries)
def usage_daily(
    principal: InferenceCaller, s: SessionDep, tenant: str | None = None, period: str | None = None
) -> dict[str, Any]:
    """Your tenant's requests, tokens and spend per day of a UTC month (`period=YYYY-MM`), by
    model; the spend sums to the invoice's total for the same month."""
    return series.usage_series(s, tenant_id=own_tenant(principal, tenant), period=period)


@router.get("/statements/daily", response_model=EarningsSeries)
def earnings_daily(
    principal: PrincipalDep, s: SessionDep, contributor: str, period: str | None = None
) -> dict[str, Any]:
    """A contributor's earnings per day of a UTC month, by role and artifact; sums to the
    statement's total. Needs a `contributor:<id>` key for that contributor, or an admin key."""
    return series.earnings_series(s, contributor_id=own_contributor(principal, contributor), period=period)


@router.get("/lineage", response_model=LineageGraph, response_model_exclude_none=True)
def lineage(principal: InferenceCaller, s: SessionDep, state: StateDep) -> dict[str, Any]:
    """The constellation as a graph: bases -> adapters and fine-tunes -> data sets ->
    contributors, of the models your tenant can see (an admin key sees all). Each model says
    whether your tenant may use it, its effective licence terms, and its price card: the terms
    along its lineage and the split of a reference request (1,000 input tokens, 1,000 output
    tokens for a causal LM, 100 ms of compute on this server's device class)."""
    graph = lineage_graph(s, tenant_id=principal.tenant_id, all_tenants=principal.is_admin)
    rates = rates_for(state.settings.prices, state.device_class)
    for node in graph["nodes"]:
        if node["type"] in ("base", "adapter", "finetune"):
            node["price"] = price_card(s, model_name=node["name"], task=node["task"], rates=rates)
    return graph
