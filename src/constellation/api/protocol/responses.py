"""The OpenAI response models (and our `constellation` extension of them) that the OpenAPI
document describes: errors, embeddings, classifications, completions and chat (whole and as
stream chunks), the model list. The routes answer with plain dicts; these document them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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
