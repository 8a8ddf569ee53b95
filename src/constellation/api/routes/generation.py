"""`POST /v1/completions` and `POST /v1/chat/completions`: causal LMs with or without an
adapter, continuously batched by the engine, with OpenAI's SSE streaming chunk format.

A streamed answer is metered like any other: its usage is committed before the final chunk
is sent; a client that disconnects mid-stream frees its sequence at once."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from constellation.api import upstream, workflow_models
from constellation.api.deps import InferenceCaller, Principal
from constellation.api.metrics import timed
from constellation.api.pipeline import Call, CallDep, Outcome
from constellation.api.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    OpenAIRequest,
    ResponseFormat,
    TextCompletion,
    Tool,
    ToolChoice,
    errors,
    sse,
)
from constellation.api.resolver import require_task
from constellation.api.structured import FREE, Structure, plan, tool_call, with_tools_prompt
from constellation.engine.decoder import Delta, Prepared
from constellation.engine.sampling import DEFAULTABLE, SamplingParams
from constellation.errors import ConstellationError, InvalidInput, NotFound

router = APIRouter(
    prefix="/v1", tags=["openai"], responses=errors(400, 401, 402, 403, 404, 413, 429, 502, 503, 504)
)
log = logging.getLogger("constellation.api")


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

    def structure(self) -> Structure:
        return plan(self.response_format)

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

    def structure(self) -> Structure:
        return plan(self.response_format, self.tools, self.tool_choice)


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


@dataclass(slots=True)
class Shape:
    """What differs between chat and plain completions in the wire format, and between a
    content answer and a tool call."""

    chat: bool
    id: str
    created: int
    model: str
    structure: Structure = FREE
    call_id: str | None = None  # a streamed named call: its id once its first delta is out

    def chunks(self, text: str, finish: str | None, texts: list[str]) -> list[dict[str, Any]]:
        """The stream's chunks for one engine delta (`texts`: every piece so far, this one last);
        the last one carries `finish` when it is set. A call to a named function streams its
        arguments as they come; any other call is sent whole once it has parsed."""
        if not (self.chat and self.structure.calls_tools):
            return [self.chunk(text, finish)] if (text or finish) else []
        if self.structure.mode == "named":
            out = [self._call_delta(text)] if text else []
            return out + ([self.chunk(None, _call_finish(finish))] if finish else [])
        if finish is None:
            return []
        whole = "".join(texts)
        call = tool_call(self.structure, whole) if finish == "stop" else None
        if call is None:
            return [self.chunk(whole, finish)]
        return [self._tools_chunk([{"index": 0, **call}]), self.chunk(None, "tool_calls")]

    def _call_delta(self, text: str) -> dict[str, Any]:
        if self.call_id is not None:
            return self._tools_chunk([{"index": 0, "function": {"arguments": text}}])
        first = tool_call(self.structure, text)
        assert first is not None
        self.call_id = first["id"]
        return self._tools_chunk([{"index": 0, **first}])

    def _tools_chunk(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        chunk = self.chunk(None, None)
        chunk["choices"][0]["delta"]["tool_calls"] = calls
        return chunk

    def chunk(self, text: str | None, finish: str | None, *, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def full(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            call = (
                tool_call(self.structure, text)
                if finish == "stop" or self.structure.mode == "named"
                else None
            )
            if call is not None:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
                finish = _call_finish(finish)
            choice: dict[str, Any] = {
                "index": 0,
                "message": message,
                "finish_reason": finish,
                "logprobs": None,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }


def _call_finish(finish: str) -> str:
    """A call that closed is `tool_calls`; one cut short keeps `length`."""
    return "tool_calls" if finish == "stop" else finish


def _usage(last: Delta) -> dict[str, int]:
    return {
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.completion_tokens,
        "total_tokens": last.prompt_tokens + last.completion_tokens,
    }


def _outcome(shape: Shape, texts: list[str], last: Delta) -> Outcome:
    assert last.finish_reason is not None
    return Outcome(
        body=shape.full("".join(texts), last.finish_reason, _usage(last)),
        input_tokens=last.prompt_tokens,
        output_tokens=last.completion_tokens,
        compute_ns=last.compute_ns or 0,
    )


def _produced(prepared: Prepared, last: Delta | None) -> Outcome:
    """What a dropped stream had produced when it was dropped: billed as `cancelled`."""
    return Outcome(
        body={},
        input_tokens=len(prepared.prompt_ids) if last else 0,
        output_tokens=last.completion_tokens if last else 0,
        compute_ns=(last.compute_ns or 0) if last else 0,
    )


async def _collect(call: Call, prepared: Prepared, shape: Shape) -> Outcome:
    texts: list[str] = []
    last: Delta | None = None
    async for d in timed(call.engines.decoder.generate(prepared), call.request.app.state.metrics):
        texts.append(d.text)
        last = d
    assert last is not None
    return _outcome(shape, texts, last)


def _sse(obj: dict[str, Any] | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


def _sse_error(exc: BaseException) -> bytes:
    if not isinstance(exc, ConstellationError):
        log.error("stream failed", exc_info=exc)
        exc = ConstellationError("internal error while generating; it has been logged", code="internal_error")
    return _sse({"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}})


async def _stream(
    call: Call, caller: Principal, prepared: Prepared, shape: Shape, include_usage: bool
) -> AsyncIterator[bytes]:
    """The SSE body. Settled exactly once: succeeded (committed before the last chunk leaves),
    failed (an engine error: not charged), or cancelled (the client went away: charged for the
    tokens produced until then and their compute)."""
    started = datetime.now(UTC)
    texts: list[str] = []
    last: Delta | None = None
    gen = timed(call.engines.decoder.generate(prepared), call.request.app.state.metrics)
    try:
        yield _sse(shape.chunk("", None, first=True))
        async for d in gen:
            texts.append(d.text)
            last = d
            chunks = shape.chunks(d.text, d.finish_reason, texts)
            if d.finish_reason is None:
                for c in chunks:
                    yield _sse(c)
                continue
            ext = await call.settle(caller, _outcome(shape, texts, d), started)
            *before, final = chunks
            for c in before:
                yield _sse(c)
            if include_usage:
                yield _sse(final)
                yield _sse(
                    {**shape.chunk(None, None), "choices": [], "usage": _usage(d), "constellation": ext}
                )
            else:
                yield _sse({**final, "constellation": ext})
        yield _sse("[DONE]")
    except Exception as exc:  # after the headers: the error travels as an event
        await call.settle(caller, None, started)
        yield _sse_error(exc)
    finally:
        await gen.aclose()  # type: ignore[attr-defined]  # an async generator: frees the sequence at once
        call.settle_later(caller, _produced(prepared, last), started, "cancelled")  # if not yet settled


async def _generate(
    call: Call,
    caller: Principal,
    body: Sampling,
    *,
    prompt: str | None,
    messages: list[dict[str, Any]] | None,
    max_tokens: int | None,
    chat: bool,
) -> Any:
    raw = body.model_dump()
    structure = body.structure()
    replay = await call.prepare(caller, body.model, raw)
    shape = Shape(
        chat=chat,
        id=("chatcmpl-" if chat else "cmpl-") + call.request_id[4:],
        created=int(time.time()),
        model=body.model,
        structure=structure,
    )
    if replay is not None:
        return _replay_stream(replay, shape) if body.stream else replay
    res = call.resolved
    require_task(res, "causal-lm")
    if res.upstream is not None:  # a provider model: what the client sent goes upstream as is
        return await upstream.generate(call, caller, body.model_dump(exclude_unset=True), chat=chat)
    params = body.params(max_tokens)
    prepared = await asyncio.to_thread(
        call.engines.decoder.prepare,
        res.base,
        res.adapter,
        prompt=prompt,
        messages=with_tools_prompt(messages, structure) if messages is not None else None,
        params=params,
        tenant=caller.tenant_id,
        constraint=structure.constraint,
    )
    await call.admit(caller, est_input_tokens=len(prepared.prompt_ids), est_output_tokens=prepared.max_new)
    if body.stream:
        include = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _stream(call, caller, prepared, shape, include),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Request-Id": call.request_id},
        )
    started = datetime.now(UTC)
    outcome = await call.guarded(caller, started, _collect(call, prepared, shape))
    return {**outcome.body, "constellation": await call.settle(caller, outcome, started)}


def _replay_stream(stored: dict[str, Any], shape: Shape) -> StreamingResponse:
    choice = stored["choices"][0]
    text = (choice["message"]["content"] or "") if shape.chat else choice["text"]
    calls = choice["message"].get("tool_calls") if shape.chat else None

    async def chunks() -> AsyncIterator[bytes]:
        first = shape.chunk(text, None, first=True) | {"id": stored["id"]}
        if calls:
            first["choices"][0]["delta"]["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
        yield _sse(first)
        yield _sse(
            shape.chunk(None, choice["finish_reason"])
            | {"id": stored["id"], "usage": stored.get("usage"), "constellation": stored.get("constellation")}
        )
        yield _sse("[DONE]")

    return StreamingResponse(chunks(), media_type="text/event-stream")


# The answers are documented, not validated: `responses=` changes only the OpenAPI document.
@router.post(
    "/completions",
    response_model=None,
    responses={200: {"model": TextCompletion, "content": sse(TextCompletion)}},
)
async def completions(body: CompletionIn, caller: InferenceCaller, call: CallDep) -> Any:
    """Complete a prompt with a causal LM (optionally `stream: true` for server-sent events)."""
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise InvalidInput(
                "send one prompt per request (a list of exactly one string is accepted)", param="prompt"
            )
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    try:
        return await _generate(
            call, caller, body, prompt=prompt, messages=None, max_tokens=body.max_tokens, chat=False
        )
    except NotFound as e:  # no model of that name: perhaps a workflow (api/workflow_models.py)
        wf = await workflow_models.or_workflow(call.request, caller, e, body.model)
        return await workflow_models.as_generation(
            call.request, caller, wf, body.model_dump(), text=prompt, chat=False
        )


@router.post(
    "/chat/completions",
    response_model=None,
    responses={200: {"model": ChatCompletion, "content": sse(ChatCompletionChunk)}},
)
async def chat_completions(body: ChatIn, caller: InferenceCaller, call: CallDep) -> Any:
    """Chat with a causal LM using its chat template (optionally streamed)."""
    if not body.messages:
        raise InvalidInput(
            "'messages' is empty; send at least one {'role': 'user', 'content': ...}", param="messages"
        )
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    try:
        return await _generate(
            call, caller, body, prompt=None, messages=messages, max_tokens=max_tokens, chat=True
        )
    except NotFound as e:  # no model of that name: perhaps a workflow (api/workflow_models.py)
        wf = await workflow_models.or_workflow(call.request, caller, e, body.model)
        last = next(
            (m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"]
        )
        return await workflow_models.as_generation(
            call.request, caller, wf, body.model_dump(), text=last, chat=True
        )
