"""Provider models in the request pipeline: the same resolve -> admit -> run -> settle-once path
as local models, with an upstream call (providers/call.py) in place of the engine. A stream is
relayed chunk by chunk; its last chunk waits for the upstream's usage, so that the answer's
`constellation` object carries the committed bill, as a local model's does."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import anyio
import pydantic_core
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from constellation.api.deps import Principal
from constellation.api.pipeline import Call, JSONBody, Outcome
from constellation.errors import ConstellationError, InvalidInput
from constellation.providers.call import Answer, Kind, Relay, Target, Usage, complete, embed, open_stream
from constellation.providers.tokens import prompt_texts

log = logging.getLogger("constellation.api")

# What a spending hold assumes an upstream may generate when the request sets no max_tokens.
DEFAULT_HOLD_OUTPUT_TOKENS = 4096


def _target(call: Call) -> Target:
    target = call.resolved.upstream
    assert target is not None
    return target


def _estimates(sent: dict[str, Any]) -> tuple[int, int]:
    """(likely, worst) input tokens for admission: characters / 3, and one per character."""
    chars = sum(len(t) for t in prompt_texts(sent))
    return chars // 3 + 1, chars + 8 * len(sent.get("messages") or []) + 1


def _outcome(answer: Answer) -> Outcome:
    u = answer.usage
    return Outcome(answer.body, u.input_tokens, u.output_tokens, answer.compute_ns)


async def embeddings(call: Call, caller: Principal, sent: dict[str, Any]) -> Outcome:
    """An embeddings request to the upstream (the route has admitted it)."""
    if sent.pop("truncate", False):
        raise InvalidInput(
            f"'truncate' is not supported for '{call.resolved.name}', a provider model; shorten the inputs",
            param="truncate",
        )
    return _outcome(await embed(call.engines.upstreams, _target(call), sent))


async def generate(call: Call, caller: Principal, sent: dict[str, Any], *, chat: bool) -> Any:
    """A chat or text completion by a provider model: admitted, run upstream and settled once."""
    likely, worst = _estimates(sent)
    max_out = sent.get("max_completion_tokens") or sent.get("max_tokens") or DEFAULT_HOLD_OUTPUT_TOKENS
    await call.admit(caller, est_input_tokens=likely, est_output_tokens=max_out, max_input_tokens=worst)
    kind: Kind = "chat" if chat else "completion"
    started = datetime.now(UTC)
    if not sent.get("stream"):
        work = complete(call.engines.upstreams, _target(call), kind, sent)
        answer = await call.guarded(caller, started, _as_outcome(work))
        return JSONBody({**answer.body, "constellation": await call.settle(caller, answer, started)})
    include = bool((sent.get("stream_options") or {}).get("include_usage"))
    stack = AsyncExitStack()
    opened = stack.enter_async_context(open_stream(call.engines.upstreams, _target(call), kind, sent))
    relay = await call.guarded(caller, started, opened)  # an error before the first byte: an error answer
    stream = RelayStream(call, caller, relay, started, chat=chat, include_usage=include)
    return RelayResponse(stream.body(), on_close=stream.close, stack=stack, request_id=call.request_id)


async def _as_outcome(work: Awaitable[Answer]) -> Outcome:
    return _outcome(await work)


class RelayStream:
    """The SSE body relayed from an upstream stream, settled exactly once: succeeded (committed
    before the last chunk leaves), failed (the upstream broke off: not charged) or cancelled (our
    client went away: charged for the tokens produced until then)."""

    def __init__(
        self,
        call: Call,
        caller: Principal,
        relay: Relay,
        started: datetime,
        *,
        chat: bool,
        include_usage: bool,
    ) -> None:
        self.call, self.caller, self.relay, self.started = call, caller, relay, started
        self.chat, self.include_usage = chat, include_usage
        self.first: dict[str, Any] | None = None
        self.finish: str | None = None

    async def body(self) -> AsyncIterator[bytes]:
        held: dict[str, Any] | None = None  # the chunk with finish_reason waits for the usage
        usage_chunk: dict[str, Any] | None = None
        try:
            async for chunk in self.relay.chunks():
                self.first = self.first or chunk
                if chunk.get("usage") and not chunk.get("choices"):
                    usage_chunk = chunk  # the upstream's usage: billed, then sent (if asked) with ours
                    continue
                if not self.include_usage:
                    chunk.pop("usage", None)
                if any(isinstance(c, dict) and c.get("finish_reason") for c in chunk.get("choices") or []):
                    if held is not None:
                        yield _sse(held)
                    held = chunk
                    self.finish = next(c["finish_reason"] for c in chunk["choices"] if c.get("finish_reason"))
                    continue
                yield _sse(chunk)
            usage = self.relay.usage()
            ext = await self.call.settle(self.caller, self._outcome(usage), self.started)
            for out in self._tail(held, usage_chunk, usage, ext):
                yield out
        except Exception as exc:  # after the headers: the error travels as an event
            await self.call.settle(self.caller, None, self.started)
            yield _sse_error(exc)

    def _tail(
        self,
        held: dict[str, Any] | None,
        usage_chunk: dict[str, Any] | None,
        usage: Usage,
        ext: dict[str, Any],
    ) -> list[bytes]:
        out: list[bytes] = []
        if not self.include_usage:
            out.append(_sse({**(held or self._empty()), "constellation": ext}))
        else:
            if held is not None:
                out.append(_sse(held))
            tail = usage_chunk or {**self._empty(), "choices": []}
            out.append(_sse({**tail, "usage": usage.as_openai(), "constellation": ext}))
        out.append(b"data: [DONE]\n\n")
        return out

    def _empty(self) -> dict[str, Any]:
        first = self.first or {}
        return {
            "id": first.get("id", "chatcmpl-" + self.call.request_id[4:]),
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": first.get("created", int(time.time())),
            "model": self.call.resolved.name,
            "choices": [],
        }

    def _outcome(self, usage: Usage) -> Outcome:
        """The whole answer as a non-streamed body (what an idempotent retry replays)."""
        first = self.first or {}
        text = "".join(self.relay.texts)
        choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish or "stop", "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        body = {
            "id": first.get("id", "chatcmpl-" + self.call.request_id[4:]),
            "object": "chat.completion" if self.chat else "text_completion",
            "created": first.get("created", int(time.time())),
            "model": self.call.resolved.name,
            "choices": [choice],
            "usage": usage.as_openai(),
        }
        return Outcome(body, usage.input_tokens, usage.output_tokens, self.relay.compute_ns)

    def close(self) -> None:
        """Settle a stream our client dropped (no-op once settled): billed for what it produced."""
        if self.call.settled:
            return
        usage = self.relay.usage()
        produced = Outcome({}, usage.input_tokens, usage.output_tokens, self.relay.compute_ns)
        self.call.settle_later(self.caller, produced, self.started, "cancelled")


class RelayResponse(StreamingResponse):
    """A relayed stream that, however it ends (finished, failed, or its client gone before or
    during the body), closes the upstream connection and settles the request."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        on_close: Callable[[], None],
        stack: AsyncExitStack,
        request_id: str,
    ) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Request-Id": request_id},
        )
        self._on_close, self._stack = on_close, stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._stack.aclose()  # closes the upstream connection: it stops generating
            self._on_close()


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + pydantic_core.to_json(obj) + b"\n\n"


def _sse_error(exc: BaseException) -> bytes:
    if not isinstance(exc, ConstellationError):
        log.error("relaying a provider's stream failed", exc_info=exc)
        exc = ConstellationError(
            "internal error while relaying the stream; it has been logged", code="internal_error"
        )
    err = {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
    return _sse({"error": err})
