"""Fine-tune schemas: a job as submitted (its data and LoRA settings) and as reported (status,
progress, result, price)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class DataFile(BaseModel):
    filename: str = Field(description="e.g. tickets.jsonl; becomes part of the data set's name")
    content: str = Field(description="the JSONL text")


class FinetuneIn(BaseModel):
    base: str = Field(description="registered base model, e.g. minilm")
    task: Literal["classification", "causal-lm"]
    name: str = Field(description="name of the new adapter")
    license: str = Field(description="licence id of the adapter")
    data: list[DataFile] = Field(default_factory=list, description="uploaded JSONL files")
    data_paths: list[str] = Field(default_factory=list, description="admin only: JSONL files on the server")
    data_license: str | None = Field(default=None, description="licence of the data (default: license)")
    author: str | None = Field(
        default=None, description="a contributor id your tenant owns (default: its only one)"
    )
    data_provider: str | None = Field(
        default=None, description="a contributor id your tenant owns (default: its only one)"
    )
    outputs_of: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="models (e.g. a provider's) whose outputs the data holds: the adapter inherits "
        "their licences",
    )
    visibility: Literal["public", "private"] = "private"
    rank: int = Field(default=8, ge=1, le=256)
    alpha: int = Field(default=16, ge=1, le=4096)
    epochs: int = Field(default=8, ge=1, le=100)
    learning_rate: float = Field(default=1e-3, gt=0, le=1)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)


class JobOut(BaseModel):
    id: str
    object: Literal["finetune"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    model: str = Field(description="the adapter being trained")
    base: str
    task: str
    tenant: str
    progress: dict[str, Any] = Field(description="step, epoch, loss... while running")
    result: dict[str, Any] | None = Field(description="the registered adapter and its metrics")
    error: str | None
    created_at: float = Field(description="Unix time")
    finished_at: float | None
    price_nanos: int | None = Field(description="what the job was billed, once it ended")
