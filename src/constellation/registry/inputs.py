"""What registering a model takes, as one pydantic schema per kind: the admin API validates its
body against it and the CLI builds it from its options, so both accept and refuse the same things.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from constellation.errors import InvalidInput

Task = Literal["embedding", "classification", "causal-lm"]
Visibility = Literal["public", "private"]


class BaseIn(BaseModel):
    """A base model to register from a directory (or GGUF file) on the server."""

    name: str
    path: str = Field(
        description="a Hugging Face model directory on the server, or a GGUF file (dequantised to fp32)"
    )
    task: Task
    author: str
    license: str | None = Field(default=None, description="licence id; defaults to the model card's")
    labels: list[str] | None = None
    visibility: Visibility = "public"
    owner_tenant: str | None = None


class AdapterIn(BaseModel):
    """A PEFT LoRA adapter to import onto a registered base."""

    name: str
    path: str = Field(description="a PEFT adapter directory on the server")
    base: str
    author: str
    license: str | None = None
    task: Task | None = None
    labels: list[str] | None = None
    datasets: list[str] = Field(default_factory=list, description="registered data set names")
    visibility: Visibility = "public"
    owner_tenant: str | None = None


M = TypeVar("M", bound=BaseModel)


def parse(schema: type[M], **fields: Any) -> M:
    """`schema` validated from keyword fields (the CLI's options), refused as InvalidInput naming
    the first wrong field and what it accepts."""
    try:
        return schema.model_validate(fields)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InvalidInput(f"{field}: {err['msg']} (got {err.get('input')!r})", param=field) from None
