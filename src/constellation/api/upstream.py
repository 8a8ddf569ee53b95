"""Provider models in the request pipeline: the same resolve -> admit -> run -> settle-once path
as local models (api/pipeline.py), with an upstream call (providers/call.py) as the engine call.
A stream is relayed chunk by chunk; its last chunk waits for the upstream's usage, so that the
answer's `constellation` object carries the committed bill, as a local model's does."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from constellation.api.pipeline import Call, EventStream, JSONBody, Outcome
from constellation.errors import InvalidInput
from constellation.providers.call import Answer, Kind, Relay, Target, Usage, complete, embed, open_stream
from constellation.providers.tokens import prompt_texts

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


async def embeddings(call: Call, sent: dict[str, Any]) -> Outcome:
    """An embeddings request to the upstream (the route has admitted it)."""
    if sent.pop("truncate", False):
        raise InvalidInput(
            f"'truncate' is not supported for '{call.resolved.name}', a provider model; shorten the inputs",
            param="truncate",
        )
    return _outcome(await embed(call.engines.upstreams, _target(call), sent))


async def generate(call: Call, sent: dict[str, Any], *, chat: bool) -> JSONBody | EventStream:
    """A chat or text completion by a provider model: admitted, run upstream and settled once."""
    likely, worst = _estimates(sent)
    max_out = sent.get("max_completion_tokens") or sent.get("max_tokens") or DEFAULT_HOLD_OUTPUT_TOKENS
    await call.admit(est_input_tokens=likely, est_output_tokens=max_out, max_input_tokens=worst)
    kind: Kind = "chat" if chat else "completion"
    if not sent.get("stream"):

        async def answer() -> Outcome:
            return _outcome(await complete(call.engines.upstreams, _target(call), kind, sent))

        return JSONBody(await call.complete(answer))

    async def relay() -> RelayStream:  # an error before the first byte: an error answer
        stack = AsyncExitStack()
        opening = open_stream(call.engines.upstreams, _target(call), kind, sent)
        opened = await stack.enter_async_context(opening)
        include = bool((sent.get("stream_options") or {}).get("include_usage"))
        return RelayStream(call, opened, stack, chat=chat, include_usage=include)

    return await call.stream(relay)


class RelayStream:
    """An upstream's stream as the pipeline's `Stream`: its chunks relayed as they come, but the
    one with `finish_reason` (and the upstream's usage chunk) held back until the usage is billed."""

    def __init__(
        self, call: Call, relay: Relay, stack: AsyncExitStack, *, chat: bool, include_usage: bool
    ) -> None:
        self.call, self.relay, self.stack = call, relay, stack
        self.chat, self.include_usage = chat, include_usage
        self.first: dict[str, Any] | None = None
        self.finish: str | None = None
        self.held: dict[str, Any] | None = None  # the chunk with finish_reason waits for the usage
        self.usage_chunk: dict[str, Any] | None = None
        self.usage: Usage | None = None

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self.relay.chunks():
            self.first = self.first or chunk
            if chunk.get("usage") and not chunk.get("choices"):
                self.usage_chunk = chunk  # the upstream's usage: billed, then sent (if asked) with ours
                continue
            if not self.include_usage:
                chunk.pop("usage", None)
            if any(isinstance(c, dict) and c.get("finish_reason") for c in chunk.get("choices") or []):
                if self.held is not None:
                    yield self.held
                self.held = chunk
                self.finish = next(c["finish_reason"] for c in chunk["choices"] if c.get("finish_reason"))
                continue
            yield chunk

    def outcome(self) -> Outcome:
        """The whole answer as a non-streamed body (what an idempotent retry replays)."""
        self.usage = usage = self.relay.usage()
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

    def closing(self, ext: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.usage is not None  # `outcome` came first
        if not self.include_usage:
            return [{**(self.held or self._empty()), "constellation": ext}]
        tail = self.usage_chunk or {**self._empty(), "choices": []}
        last = {**tail, "usage": self.usage.as_openai(), "constellation": ext}
        return [self.held, last] if self.held is not None else [last]

    def produced(self) -> Outcome:
        usage = self.relay.usage()
        return Outcome({}, usage.input_tokens, usage.output_tokens, self.relay.compute_ns)

    async def aclose(self) -> None:
        await self.stack.aclose()  # closes the upstream connection: it stops generating

    def _empty(self) -> dict[str, Any]:
        first = self.first or {}
        return {
            "id": first.get("id", "chatcmpl-" + self.call.request_id[4:]),
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": first.get("created", int(time.time())),
            "model": self.call.resolved.name,
            "choices": [],
        }
