"""The dashboard's schemas: usage and earnings per day, and the lineage graph (nodes with their
terms and price cards, edges)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

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
