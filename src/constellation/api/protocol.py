"""What the OpenAI wire format allows that this server does not: the request models' shared base
refuses each unimplemented field by name (unless it carries its neutral value) and any text
that is not valid Unicode, so that a client never gets a silent approximation of its request."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from constellation.errors import InvalidInput

# OpenAI request fields this server does not implement, each with the values that ask for
# nothing beyond what it does (a client library may send those by default).
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "response_format": (None, {"type": "text"}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, True, False),
    "functions": (None, []),
    "function_call": (None, "none"),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "logit_bias": (None, {}),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "service_tier": (None, "auto", "default"),
    "store": (None, False),
    "metadata": (None, {}),
}


class OpenAIRequest(BaseModel):
    """Base of the /v1 request models: unknown fields are refused, not ignored (and the OpenAPI
    document says so: `additionalProperties: false`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        extra = [name for name in data if name not in cls.model_fields]
        for name in extra:
            if name not in UNSUPPORTED:
                raise InvalidInput(
                    f"unrecognised request field '{name}'; remove it (see /docs for the fields "
                    "this endpoint takes)",
                    param=name,
                    code="unsupported_field",
                )
            if data[name] not in UNSUPPORTED[name]:
                raise InvalidInput(
                    f"'{name}' is not supported by this server; remove it (it would be ignored, and "
                    "the answer would not be what you asked for)",
                    param=name,
                    code="unsupported_field",
                )
        return {k: v for k, v in data.items() if k not in extra}  # neutral values: nothing to do

    @model_validator(mode="after")
    def _refuse_invalid_text(self) -> OpenAIRequest:
        for name in type(self).model_fields:
            check_text(getattr(self, name), name)
        return self


def check_text(value: object, param: str) -> None:
    """Refuse strings that cannot be encoded as UTF-8 (a lone UTF-16 surrogate escaped in the
    JSON, e.g. "\\ud800"), anywhere inside `value`."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidInput(
                    f"'{param}' holds an unpaired UTF-16 surrogate at character {exc.start}; "
                    "send valid Unicode text",
                    param=param,
                    code="invalid_text",
                ) from None
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_text(item, f"{param}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(v, f"{param}.{k}")
    elif isinstance(value, BaseModel):
        for k in type(value).model_fields:
            check_text(getattr(value, k), f"{param}.{k}")
