"""The catalog's admin schemas: data sets, contributors and contribution terms, as sent (…In) and
as answered (…Out). Models and adapters register through registry/inputs.py, shared with the CLI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from constellation.api.protocol.responses import LineageOut
from constellation.economy.money import MAX_RATE_NANOS


class DatasetIn(BaseModel):
    name: str
    path: str = Field(description="a JSONL file on the server")
    license: str
    provider: str
    outputs_of: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="models (e.g. a provider's) whose outputs the data set holds: models trained "
        "on it inherit their licences",
    )


class ContributorIn(BaseModel):
    id: str
    name: str
    kind: Literal["person", "organisation", "infrastructure", "platform"]
    email: str | None = None


class TermIn(BaseModel):
    subject_type: Literal["model", "dataset"]
    subject: str
    contributor: str
    kind: Literal["per_1k_input_tokens", "per_1k_output_tokens", "per_request", "per_compute_second"]
    amount_nanos: int = Field(
        ge=0, le=MAX_RATE_NANOS, description="integer nano-USD (1e-9 USD); at most 10**12"
    )


class ModelOut(BaseModel):
    name: str
    kind: str = Field(description="base, adapter, finetune or provider")
    task: str
    base: str | None
    license: str | None
    author: str | None
    labels: list[str] | None
    visibility: Literal["public", "private"]
    owner_tenant: str | None
    artifact: str | None = Field(description="sha256 of the stored weights")
    card: dict[str, Any]
    lineage: LineageOut
    created_at: str


class TermRef(BaseModel):
    text: str
    artifact: str
    artifact_type: str
    license: str


class EffectiveTermsOut(BaseModel):
    """The licence terms combined over a model's lineage; each term names where it comes from."""

    model_config = ConfigDict(extra="allow")

    commercial_use: bool
    commercial_blockers: list[TermRef]
    notices: list[str]
    attributions: list[TermRef]
    restrictions: list[TermRef]
    acceptance_required: list[str]
    user_limit: int | None
    user_limit_source: TermRef | None
    share_alike: list[TermRef]


class ModelDetail(ModelOut):
    effective_terms: EffectiveTermsOut


class DatasetOut(BaseModel):
    name: str
    sha256: str
    example_count: int
    license: str
    provider: str
    artifact: str | None
    owner_tenant: str | None
    created_at: str


class DatasetCreated(DatasetOut):
    created: bool = Field(description="false when the same bytes were registered before")


class ContributorOut(BaseModel):
    id: str
    name: str
    kind: str
    email: str | None


class TermOut(BaseModel):
    subject_type: Literal["model", "dataset"]
    subject: str | None = Field(description="null when the subject was removed")
    contributor: str
    kind: str
    amount_nanos: int
