"""The OpenAI request models: completions, chat (with structured outputs and tools), embeddings
and classification. Their shared base refuses each field this server does not implement, by name,
unless it carries its neutral value, and any text that is not valid Unicode."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from constellation.engine.decoder.sampling import DEFAULTABLE, SamplingParams
from constellation.errors import InvalidInput

# OpenAI request fields this server does not implement, each with the values that ask for
# nothing beyond what it does (a client library may send those by default).
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
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


# --- Structured outputs (requests) -------------------------------------------------------------


class JsonSchemaFormat(BaseModel):
    name: str = Field(max_length=64, description="a name for the schema (OpenAI requires one)")
    description: str | None = None
    schema_: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description="a JSON Schema (draft 2020-12) the answer obeys"
    )
    strict: bool | None = Field(default=None, description="accepted; answers are always held to the schema")

    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class ResponseFormat(BaseModel):
    """`text` (the default), `json_object` (any JSON object) or `json_schema` (that schema)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    model_config = ConfigDict(extra="forbid")


class FunctionDef(BaseModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="a JSON Schema for the arguments (an empty object when omitted)",
    )
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid")


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDef

    model_config = ConfigDict(extra="forbid")


class ToolChoiceFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: ToolChoiceFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


# --- Requests -----------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


MAX_TOKENS_BOUND = 1_000_000  # far above any context here; bounds the arithmetic on it


class Sampling(OpenAIRequest):
    model: str = Field(description="a causal-lm model or adapter name from GET /v1/models")
    max_tokens: int | None = Field(
        default=None, ge=1, le=MAX_TOKENS_BOUND, description="cap on generated tokens (default: what fits)"
    )
    temperature: float = Field(
        default=1.0, ge=0, le=2, description="0 = greedy; omitted: the model's generation_config, else 1"
    )
    top_p: float = Field(
        default=1.0, gt=0, le=1, description="omitted: the model's generation_config, else 1"
    )
    top_k: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="extension: keep the k most likely tokens (0 = off); omitted: the model's default",
    )
    seed: int | None = Field(
        default=None,
        ge=-(2**63),
        le=2**64 - 1,
        description="a 64-bit integer; same seed, same answer, whatever shares the batch",
    )
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormat | None = Field(
        default=None,
        description="json_object or json_schema: the answer is constrained to parse (and to obey the "
        "schema); schemas are limited to 32 KiB of JSON",
    )

    def params(self, max_tokens: int | None) -> SamplingParams:
        if self.n != 1:
            raise InvalidInput(
                "n > 1 is not supported; send n separate requests (with different seeds)", param="n"
            )
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=tuple(stops),
            unset=frozenset(f for f in DEFAULTABLE if f not in self.model_fields_set),
        )


class CompletionIn(Sampling):
    prompt: str | list[str]

    def the_prompt(self) -> str:
        """The one prompt (a list of exactly one string is accepted)."""
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise InvalidInput(
                "send one prompt per request (a list of exactly one string is accepted)", param="prompt"
            )
        return self.prompt[0]


class ChatMessage(BaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(
        default=None, description="an earlier assistant turn's calls"
    )
    tool_call_id: str | None = Field(default=None, description="on a tool message: the call it answers")

    def text(self) -> str:
        """The message as the chat template sees it; earlier tool calls as the JSON the model wrote."""
        fns = [c.get("function") for c in self.tool_calls or [] if isinstance(c, dict)]
        calls: list[dict[str, Any]] = [f for f in fns if isinstance(f, dict)]
        if not calls:
            return _text_of(self.content)
        return "\n".join(json.dumps({"name": c.get("name"), "arguments": _arguments(c)}) for c in calls)


class ChatIn(Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)
    tools: list[Tool] | None = Field(default=None, description="functions the model may call")
    tool_choice: ToolChoice | None = Field(
        default=None,
        description="none, auto (default with tools), required, or {type: function, function: {name}}",
    )

    def turns(self) -> list[dict[str, Any]]:
        """The messages as the chat template takes them."""
        if not self.messages:
            raise InvalidInput(
                "'messages' is empty; send at least one {'role': 'user', 'content': ...}", param="messages"
            )
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    def completion_cap(self) -> int | None:
        """`max_completion_tokens`, else the older `max_tokens`."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def _arguments(function: dict[str, Any]) -> Any:
    """A call's arguments as the model wrote them: JSON when they parse, else the raw text."""
    raw = function.get("arguments")
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return raw


def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise InvalidInput(
                f"content parts of type {part.get('type')!r} are not supported; send text parts",
                param="messages",
            )
        parts.append(str(part.get("text", "")))
    return "".join(parts)


class EmbeddingsIn(OpenAIRequest):
    model: str = Field(description="an embedding model or adapter name from GET /v1/models")
    input: str | list[str] = Field(description="a string or a list of strings to embed")
    encoding_format: Literal["float", "base64"] = "float"
    truncate: bool = Field(
        default=False, description="cut inputs longer than the model's limit instead of a 400"
    )
    user: str | None = None
    dimensions: int | None = Field(default=None, description="not supported; leave unset")

    def texts(self, limit: int) -> list[str]:
        """The inputs, at most `limit` of them, none empty."""
        if self.dimensions is not None:
            raise InvalidInput(
                "'dimensions' is not supported; omit it to get the model's native size", param="dimensions"
            )
        return _texts(self.input, limit)


class ClassifyIn(OpenAIRequest):
    model: str = Field(description="a classification adapter name from GET /v1/models")
    input: str | list[str]
    truncate: bool = False

    def texts(self, limit: int) -> list[str]:
        """The inputs, at most `limit` of them, none empty."""
        return _texts(self.input, limit)


def _texts(value: str | list[str], limit: int) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise InvalidInput("'input' is empty; send a string or a non-empty list of strings", param="input")
    if len(texts) > limit:
        raise InvalidInput(f"'input' has {len(texts)} items; send at most {limit} per request", param="input")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise InvalidInput(f"'input' item(s) {empty[:10]} are empty strings; remove them", param="input")
    return texts
