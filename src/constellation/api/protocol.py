"""The OpenAI wire format as served here, in one module: the request models (their shared base
refuses each unimplemented field by name, unless it carries its neutral value, and any text that is
not valid Unicode) and the response models that the OpenAPI document describes.

The inference routes build their answers as plain dicts (the hot path is not validated twice);
these models only document them, and the tests check that real answers validate against them."""

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


# --- Responses ----------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong and what to send instead")
    type: str = Field(description="e.g. invalid_request_error, authentication_error, server_error")
    param: str | None = Field(description="the request field at fault, if one is")
    code: str | None = Field(description="a stable machine-readable code")


class ErrorOut(BaseModel):
    """Every error, whatever the route: OpenAI's shape."""

    error: ErrorDetail


ERROR_TEXT = {
    400: "invalid request (a field's value, an unknown field, a body that is not JSON)",
    401: "missing, unknown or revoked API key",
    402: "the tenant's balance or spending limit does not cover the request",
    403: "the key's scope, the tenant or a licence does not permit this",
    404: "no such resource, or not visible to this key",
    409: "conflicts with what exists (a name taken, an Idempotency-Key reused)",
    413: "the request body is too large",
    429: "rate limit exceeded; retry after `Retry-After` seconds",
    502: "a provider model's upstream failed or answered wrongly; `code` names what it did",
    503: "overloaded or starting up (or a provider's upstream is); retry after `Retry-After` seconds",
    504: "a provider model's upstream did not answer in time",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries documenting the given error statuses with `ErrorOut`."""
    return {c: {"model": ErrorOut, "description": ERROR_TEXT[c]} for c in codes}


class LineageDataset(BaseModel):
    name: str
    weight: int = Field(description="the data set's share of the adapter's training, relative")
    license: str
    provider: str


class LineageOut(BaseModel):
    base: str | None = Field(description="the base model of an adapter (null for a base)")
    base_license: str | None
    datasets: list[LineageDataset]


class SplitEntry(BaseModel):
    """One leg of a request's price: who is paid how much for which artifact."""

    account: str = Field(description="ledger account, e.g. contributor:sbert")
    role: str = Field(
        description="infra, provider (the upstream's list price), base, adapter, data, platform"
    )
    artifact: str | None = Field(description="the model or data set paid for (null for infra/platform)")
    amount_nanos: int


class ConstellationExt(BaseModel):
    """The `constellation` extension on every inference answer: what the request cost, who was
    paid, and what it was made of. Without metering the price fields are absent."""

    model_config = ConfigDict(extra="allow")

    request_id: str
    compute_ns: int | None = Field(default=None, description="engine time attributed to the request")
    price_nanos: int | None = Field(default=None, description="what the tenant was charged, in nano-USD")
    price_usd: str | None = Field(default=None, description="the same, as an exact decimal string")
    split: list[SplitEntry] | None = Field(default=None, description="the price's legs; they sum to it")
    notices: list[str] | None = Field(default=None, description="attribution notices of the lineage")
    lineage: LineageOut | None = None
    written_off_nanos: int | None = Field(
        default=None, description="present when the balance could not cover the whole price"
    )


ESTIMATED = "true when the upstream reported no usage and its tokens were counted here"


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    estimated: bool | None = Field(default=None, description=ESTIMATED)


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    constellation: ConstellationExt


class Classification(BaseModel):
    index: int
    label: str
    probs: dict[str, float] = Field(description="every label's probability")


class ClassificationList(BaseModel):
    object: Literal["list"]
    data: list[Classification]
    model: str
    usage: EmbeddingUsage
    constellation: ConstellationExt


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool | None = Field(default=None, description=ESTIMATED)


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]  # the last from provider models


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="the arguments as JSON text, valid against the tool's parameters")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None = Field(description="null when the answer is tool_calls")
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    constellation: ConstellationExt


class FunctionCallDelta(BaseModel):
    name: str | None = Field(default=None, description="in the call's first delta only")
    arguments: str | None = Field(default=None, description="the next piece of the arguments' JSON text")


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = Field(default=None, description="in the call's first delta only")
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = Field(default=None, description="in the first chunk only")
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None
    logprobs: None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion; the last chunk (or, with
    `stream_options.include_usage`, an extra one with no choices) carries `usage` and
    `constellation`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    constellation: ConstellationExt | None = None


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None = Field(description="null in a streamed chunk before the last")
    logprobs: None


class TextCompletion(BaseModel):
    """A completion, or one server-sent event of a streamed one (then `usage` and
    `constellation` come with the last)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: CompletionUsage | None = None
    constellation: ConstellationExt | None = None


class Refusal(BaseModel):
    code: str
    message: str


class ModelExt(BaseModel):
    task: str = Field(description="embedding, classification or causal-lm")
    kind: str = Field(description="base, adapter, finetune, provider (served by an upstream) or workflow")
    base: str | None
    license: str | None
    labels: list[str] | None = Field(description="a classifier's labels")
    provider: str | None = Field(description="a provider model's upstream provider (else null)")
    on_platform: bool | None = Field(
        description="a provider model: whether its upstream runs on this platform (else null)"
    )
    lineage: LineageOut
    permitted: bool = Field(description="whether the lineage's licences permit this tenant's use")
    refusal: Refusal | None = Field(description="what a request would get (403) when not permitted")
    notices: list[str]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    constellation: ModelExt


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


def sse(chunk: type[BaseModel]) -> dict[str, Any]:
    """The `text/event-stream` content of a streamed route: `data: <chunk JSON>` events, then
    `data: [DONE]`; an error after the headers comes as a `data: <ErrorOut JSON>` event."""
    return {
        "text/event-stream": {
            "schema": {
                "type": "string",
                "description": f"server-sent events, each `data: ` and one {chunk.__name__} as JSON "
                "(see its schema), ending with `data: [DONE]`; an error after the first event "
                "arrives as one ErrorOut event",
            }
        }
    }


STREAMED: tuple[type[BaseModel], ...] = (ChatCompletionChunk, TextCompletion, ErrorOut)
