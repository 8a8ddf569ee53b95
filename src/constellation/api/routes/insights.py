"""The data behind the dashboard's pictures, as typed JSON: a tenant's usage per day, a
contributor's earnings per day (both summing exactly to the invoice and the statement), and
the lineage graph of what a key can see."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from constellation.api.deps import (
    InferenceCaller,
    PrincipalDep,
    SessionDep,
    StateDep,
    own_contributor,
    own_tenant,
)
from constellation.api.protocol.responses import errors
from constellation.api.schemas.insights import (
    EarningsSeries,
    LineageGraph,
    UsageSeries,
)
from constellation.economy import series
from constellation.economy.price_card import price_card, rates_for
from constellation.registry.graph import lineage_graph

router = APIRouter(prefix="/api", tags=["insights"], responses=errors(400, 401, 403))


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
