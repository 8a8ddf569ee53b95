"""`POST /v1/completions` and `POST /v1/chat/completions`: causal LMs with or without an
adapter, continuously batched by the engine, with OpenAI's SSE streaming chunk format.

A streamed answer is metered like any other (api/pipeline.py): its usage is committed before the
final chunk is sent; a client that disconnects mid-stream frees its sequence at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter

from constellation.api import upstream, workflow_models
from constellation.api.answers import DecoderStream, Shape, collect, replay_stream
from constellation.api.deps import InferenceCaller, Principal
from constellation.api.metrics import timed
from constellation.api.pipeline import Call, CallDep, Outcome
from constellation.api.protocol.requests import ChatIn, CompletionIn
from constellation.api.protocol.responses import (
    ChatCompletion,
    ChatCompletionChunk,
    TextCompletion,
    errors,
    sse,
)
from constellation.api.resolver import require_task
from constellation.api.structured import Structure, plan, with_tools_prompt
from constellation.engine.decoder.sequence import Delta
from constellation.errors import NotFound

router = APIRouter(
    prefix="/v1", tags=["openai"], responses=errors(400, 401, 402, 403, 404, 413, 429, 502, 503, 504)
)


# The answers are documented, not validated: `responses=` changes only the OpenAPI document.
@router.post(
    "/completions",
    response_model=None,
    responses={200: {"model": TextCompletion, "content": sse(TextCompletion)}},
)
async def completions(body: CompletionIn, caller: InferenceCaller, call: CallDep) -> Any:
    """Complete a prompt with a causal LM, or a workflow whose answer is text (optionally
    `stream: true` for server-sent events)."""
    prompt = body.the_prompt()
    try:
        return await _generate(call, caller, body, prompt=prompt, max_tokens=body.max_tokens)
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
    """Chat with a causal LM using its chat template, or with a workflow whose answer is text
    (optionally streamed)."""
    messages = body.turns()
    try:
        return await _generate(call, caller, body, messages=messages, max_tokens=body.completion_cap())
    except NotFound as e:  # no model of that name: perhaps a workflow (api/workflow_models.py)
        wf = await workflow_models.or_workflow(call.request, caller, e, body.model)
        last = next(
            (m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"]
        )
        return await workflow_models.as_generation(
            call.request, caller, wf, body.model_dump(), text=last, chat=True
        )


async def _generate(
    call: Call,
    caller: Principal,
    body: CompletionIn | ChatIn,
    *,
    prompt: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    max_tokens: int | None,
) -> Any:
    """Resolve; replay, hand a provider model upstream, or tokenise, admit and run the decoder."""
    chat, structure = messages is not None, _structure(body)
    replay = await call.resolve(caller, body.model, body.model_dump())
    shape = Shape(
        chat=chat,
        id=("chatcmpl-" if chat else "cmpl-") + call.request_id[4:],
        created=int(time.time()),
        model=body.model,
        structure=structure,
    )
    if replay is not None:
        return replay_stream(replay, shape) if body.stream else replay
    res = call.resolved
    require_task(res, "causal-lm")
    if res.upstream is not None:  # a provider model: what the client sent goes upstream as is
        return await upstream.generate(call, body.model_dump(exclude_unset=True), chat=chat)
    prepared = await asyncio.to_thread(
        call.engines.decoder.prepare,
        res.base,
        res.adapter,
        prompt=prompt,
        messages=with_tools_prompt(messages, structure) if messages is not None else None,
        params=body.params(max_tokens),
        tenant=caller.tenant_id,
        constraint=structure.constraint,
    )
    await call.admit(est_input_tokens=len(prepared.prompt_ids), est_output_tokens=prepared.max_new)

    def deltas() -> AsyncIterator[Delta]:  # lazy: nothing reaches the engine until it is iterated
        return timed(call.engines.decoder.generate(prepared), call.state.metrics)

    if body.stream:
        include = bool(body.stream_options and body.stream_options.include_usage)

        async def start() -> DecoderStream:
            return DecoderStream(deltas(), prepared, shape, include_usage=include)

        return await call.stream(start)

    async def answer() -> Outcome:
        return await collect(deltas(), shape)

    return await call.complete(answer)


def _structure(body: CompletionIn | ChatIn) -> Structure:
    """How the answer is constrained: `response_format`, and for chat `tools` / `tool_choice`."""
    if isinstance(body, ChatIn):
        return plan(body.response_format, body.tools, body.tool_choice)
    return plan(body.response_format)
