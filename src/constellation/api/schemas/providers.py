"""Provider schemas: an upstream OpenAI-compatible API and a model it exposes, as sent and as
answered (with the circuit's state)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from constellation.economy.money import MAX_RATE_NANOS
from constellation.registry import providers as repo


class ProviderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=128, description="a slug, e.g. 'openai'")
    base_url: str = Field(
        max_length=500, description="the upstream's OpenAI-compatible root, e.g. https://api.openai.com/v1"
    )
    api_key_env: str | None = Field(
        default=None,
        max_length=128,
        description="the environment variable (or secrets-file entry) holding the key; "
        "the key itself is never sent here",
    )
    contributor: str | None = Field(
        default=None, description="the account owed the upstream's price (default: the provider's name)"
    )
    on_platform: bool = Field(
        default=False, description="true: the upstream runs on this platform's infrastructure"
    )
    timeout_s: float = Field(default=60.0, gt=0, le=repo.MAX_TIMEOUT_S)
    max_concurrency: int = Field(default=64, gt=0, le=repo.MAX_CONCURRENCY)
    max_retries: int = Field(default=2, ge=0, le=repo.MAX_RETRIES)


class ExposeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=200, description="the upstream's model id")
    name: str = Field(max_length=128, description="the local model name clients will use")
    task: Literal["causal-lm", "embedding"]
    price_per_1k_input: int = Field(
        default=0, ge=0, le=MAX_RATE_NANOS, description="nano-USD per 1k input tokens"
    )
    price_per_1k_output: int = Field(
        default=0, ge=0, le=MAX_RATE_NANOS, description="nano-USD per 1k output tokens"
    )
    license: str | None = Field(
        default=None, description=f"licence id of its terms (default '{repo.DEFAULT_LICENCE}')"
    )
    visibility: Literal["public", "private"] = "public"
    owner_tenant: str | None = None


class ExposedOut(BaseModel):
    name: str
    upstream_model: str
    task: str


class ProviderOut(BaseModel):
    name: str
    base_url: str
    api_key_env: str | None = Field(description="the variable's name; its value is never shown")
    key_present: bool = Field(description="whether this server can read the key now")
    contributor: str
    on_platform: bool
    timeout_s: float
    max_concurrency: int
    max_retries: int
    models: list[ExposedOut]
    circuit: str = Field(description="closed, open or half-open (this server process)")
    created_at: str
